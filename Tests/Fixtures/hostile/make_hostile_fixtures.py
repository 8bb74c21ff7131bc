"""Generates hostile files: each reproduces a crash, a hang or a silent acceptance that the readers
must turn into a one-line error naming the file. HostileReaderTests reads them.

Run from anywhere:  python3 Tests/Fixtures/hostile/make_hostile_fixtures.py
Needs h5py, numpy. CI never runs this; it uses the outputs (all a few KB).

Outputs, weights (HDF5 state dicts, one float32 dataset features.0.bias beside the trouble):
  loop_weights.h5              a group hard-linked into itself (h5py g['loop'] = g): endless recursion
  soft_loop_weights.h5         a soft link from a group to its parent
  deep_weights.h5              groups nested 40 deep
  external_link_weights.h5     an external link to external_target.h5 (the weights could change under an
                               unchanged sha256)
  external_storage_weights.h5  a dataset whose values live in external_storage_weights.raw
  virtual_weights.h5           a virtual dataset mapping external_target.h5
  overlapping.safetensors      two tensors sharing the same data bytes
  gap.safetensors              unclaimed bytes between two tensors
Outputs, models (model.h5 of a two-class head on a one-conv VGG, as train-head writes it):
  model_ok.h5                  the valid model the others change one thing of
  model_dropout_2.h5, model_dropout_nan.h5, model_hidden_negative.h5, model_conv_negative.h5,
  model_conv_huge.h5 (2^40), model_pooled_huge.h5 (pooledSize 100000), model_duplicate_classes.h5,
  model_crop_huge.h5 (crop 10^9), model_wrong_shape.h5 (classifier.6.weight [2, 5] for hidden 4),
  model_extra_key.h5 (a dataset the configuration has no place for), model_loop.h5 (a self-linked group)
"""
import json
import os
import struct

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def path(name):
    return os.path.join(HERE, name)


def bias(f):
    f.create_dataset("features.0.bias", data=np.arange(4, dtype=np.float32))


def weights_fixtures():
    with h5py.File(path("loop_weights.h5"), "w") as f:
        bias(f)
        group = f.create_group("features")
        group.create_dataset("1", data=np.zeros(2, dtype=np.float32))
        group["loop"] = group
    with h5py.File(path("soft_loop_weights.h5"), "w") as f:
        bias(f)
        group = f.create_group("features")
        group["up"] = h5py.SoftLink("/features")
    with h5py.File(path("deep_weights.h5"), "w") as f:
        bias(f)
        f.create_group("/".join(["g"] * 40))
    with h5py.File(path("external_target.h5"), "w") as f:
        f.create_dataset("values", data=np.ones(4, dtype=np.float32))
    with h5py.File(path("external_link_weights.h5"), "w") as f:
        bias(f)
        f["features.1.bias"] = h5py.ExternalLink("external_target.h5", "/values")
    with open(path("external_storage_weights.raw"), "wb") as raw:
        raw.write(np.ones(4, dtype="<f4").tobytes())
    with h5py.File(path("external_storage_weights.h5"), "w") as f:
        bias(f)
        f.create_dataset("features.1.bias", shape=(4,), dtype="<f4",
                         external=[("external_storage_weights.raw", 0, 16)])
    with h5py.File(path("virtual_weights.h5"), "w", libver=("v110", "v110")) as f:
        bias(f)
        layout = h5py.VirtualLayout(shape=(4,), dtype="<f4")
        layout[:] = h5py.VirtualSource("external_target.h5", "values", shape=(4,))
        f.create_virtual_dataset("features.1.bias", layout)


def safetensors(name, header, data):
    encoded = json.dumps(header, separators=(",", ":")).encode()
    with open(path(name), "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded + data)


def safetensors_fixtures():
    data = np.arange(4, dtype="<f4").tobytes()
    safetensors("overlapping.safetensors", {
        "features.0.bias": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "features.1.bias": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }, data)
    safetensors("gap.safetensors", {
        "features.0.bias": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "features.1.bias": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]},
    }, data)


CONFIG = {"classes": 2, "features": [{"conv": {"_0": 2}}, {"pool": {}}], "hidden": 4,
          "inputChannels": 3, "name": "vgg-tiny", "pooledSize": 1}
PREPROCESS = {"crop": 8, "interpolation": "bilinear-antialias", "mean": [0.5, 0.5, 0.5], "resize": 8,
              "std": [0.25, 0.25, 0.25]}


def model(name, config=CONFIG, classes=("cat", "dog"), dropout="0.5", preprocess=PREPROCESS,
          weight_shape=(2, 4), extra=None, loop=False):
    # Fixed-length string attributes, as bottleneck writes them (h5py's np.bytes_ gives those).
    attributes = {
        "format": "bottleneck-model/1", "mode": "head", "backbone": config["name"],
        "config": json.dumps(config, sort_keys=True, separators=(",", ":")),
        "classes": json.dumps(list(classes), separators=(",", ":")),
        "cut_layer": "fc7", "cut_layer_path": "classifier.4",
        "weights_sha256": "random-seed-1", "weights_source": "random",
        "preprocess": json.dumps(preprocess, sort_keys=True, separators=(",", ":")),
        "trainable_layers": '["classifier.6"]', "dropout": dropout,
        "tool_version": "hostile-fixture", "created": "2026-01-01T00:00:00Z",
    }
    with h5py.File(path(name), "w") as f:
        f.create_dataset("classifier.6.weight", data=np.full(weight_shape, 0.125, dtype="<f4"))
        f.create_dataset("classifier.6.bias", data=np.zeros(2, dtype="<f4"))
        if extra:
            f.create_dataset(extra, data=np.zeros(3, dtype="<f4"))
        if loop:
            group = f.create_group("classifier")
            group["loop"] = group
        for key, value in attributes.items():
            f.attrs[key] = np.bytes_(value.encode())


def with_config(**changes):
    return {**CONFIG, **changes}


def model_fixtures():
    model("model_ok.h5")
    model("model_dropout_2.h5", dropout="2.0")
    model("model_dropout_nan.h5", dropout="nan")
    model("model_hidden_negative.h5", config=with_config(hidden=-1))
    model("model_conv_negative.h5", config=with_config(features=[{"conv": {"_0": -4}}, {"pool": {}}]))
    model("model_conv_huge.h5", config=with_config(features=[{"conv": {"_0": 2 ** 40}}, {"pool": {}}]))
    model("model_pooled_huge.h5", config=with_config(pooledSize=100000))
    model("model_duplicate_classes.h5", classes=("cat", "cat"))
    model("model_crop_huge.h5", preprocess={**PREPROCESS, "crop": 10 ** 9, "resize": 10 ** 9})
    model("model_wrong_shape.h5", weight_shape=(2, 5))
    model("model_extra_key.h5", extra="features.9.bias")
    model("model_loop.h5", loop=True)


if __name__ == "__main__":
    weights_fixtures()
    safetensors_fixtures()
    model_fixtures()
