"""Generates the small weight files the weight-file tests read: other dtypes, other layouts,
and broken files. The network fixtures (../network/) cover float32 VGG state dicts in all formats.

Run from anywhere:  python3 Tests/Fixtures/weights/make_weight_fixtures.py
Needs torch, safetensors, h5py. CI never runs this; it uses the outputs.

Outputs:
  tiny_f32.safetensors                       the reference values, float32
  tiny_{f16,bf16,f64}_{legacy,zip}.pth       the same values in other dtypes (values chosen exact in each)
  tiny_{f16,bf16,f64}.safetensors, tiny_{f16,f64}.h5
  half_specials.safetensors/.pth              float16 edge cases: zeros, subnormals, max, infinities
  old_style_legacy.pth                       legacy stream as 2017-era torch wrote it (torchvision's vgg16-397923af.pth):
                                             _rebuild_tensor (v1), OrderedDict([[key, value], ...])
  protocol4_zip.pth                          pickle protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE, ...)
  checkpoint_wrapped.pth                     {"epoch", "state_dict": {"module.<key>": ...}, "optimizer"}
  noncontiguous_{legacy,zip}.pth             a transposed tensor and a slice sharing one storage
  resnet_like.pth                            a foreign architecture (conv1/bn1/layer1/fc, an int64 buffer)
  whole_module.pth                           torch.save(model) instead of its state dict
  truncated_legacy.pth, truncated_zip.pth    cut short
  compressed_zip.pth                         the zip re-written with deflate
  zip64_zip.pth                              the zip re-written with ZIP64 sizes, offsets and end records
  text_renamed.pth, jpeg_renamed.pth         not weights at all
  offsets_past_eof.safetensors               data_offsets beyond the end of the file
"""
import collections
import json
import os
import pickle
import struct
import zipfile
import zlib

import h5py
import torch
import torch.nn as nn
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def path(name):
    return os.path.join(HERE, name)


def tiny_state_dict():
    # Multiples of 1/64 in [-2, 2): exact in float16, bfloat16 and float64, so every
    # dtype's file must load to exactly the float32 reference.
    generator = torch.Generator().manual_seed(7)

    def values(*shape):
        return torch.randint(-128, 128, shape, generator=generator).to(torch.float32) / 64

    return {
        "features.0.weight": values(4, 3, 3, 3),
        "features.0.bias": values(4),
        "classifier.0.weight": values(5, 6),
        "classifier.0.bias": values(5),
    }


def save_legacy(state, name):
    torch.save(state, path(name), _use_new_zipfile_serialization=False)


class OldStorage:
    """A storage as torch 0.3 pickled it: a persistent id, its bytes written after the pickles."""

    def __init__(self, key, tensor):
        self.key, self.tensor = key, tensor


def save_old_style_legacy(state, name):
    # Mirrors torch 0.3's serialization (which current torch can no longer write): the same
    # header pickles and storage layout as _legacy_save, but tensors rebuilt by the v1
    # function and the OrderedDict pickled as Python 2 did, from a list of [key, value] pairs.
    storages = {}

    class OldPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, OldStorage):
                storages[obj.key] = obj.tensor
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.tensor.numel(), None)
            return None

        def reducer_override(self, obj):
            if isinstance(obj, torch.Tensor):
                storage = OldStorage(str(1000 + len(storages)), obj.contiguous())
                return torch._utils._rebuild_tensor, (storage, 0, tuple(obj.shape), obj.contiguous().stride())
            if isinstance(obj, collections.OrderedDict):
                return collections.OrderedDict, ([[key, value] for key, value in obj.items()],)
            return NotImplemented

    with open(path(name), "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 8}}, f, protocol=2)
        OldPickler(f, protocol=2).dump(collections.OrderedDict(state))
        pickle.dump(sorted(storages), f, protocol=2)
        for key in sorted(storages):
            f.write(struct.pack("<q", storages[key].numel()))
            f.write(storages[key].numpy().astype("<f4").tobytes())


def write_zip64(entries, name):
    # Every size and offset saturated and given in ZIP64 extras, as writers do past 4 GB;
    # Python's zipfile only does that for members that need it, so the records are written here.
    archive, directory = bytearray(), bytearray()
    for member, data in entries:
        offset, encoded, crc = len(archive), member.encode(), zlib.crc32(data)
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        archive += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                               len(encoded), len(local_extra)) + encoded + local_extra + data
        central_extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                                 len(encoded), len(central_extra), 0, 0, 0, 0, 0xFFFFFFFF) + encoded + central_extra
    directory_offset = len(archive)
    archive += directory
    end64_offset = len(archive)
    archive += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries), len(entries),
                           len(directory), directory_offset)
    archive += struct.pack("<IIQI", 0x07064B50, 0, end64_offset, 1)
    archive += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path(name), "wb") as f:
        f.write(archive)


def main():
    state = tiny_state_dict()
    save_file(state, path("tiny_f32.safetensors"))
    for suffix, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16), ("f64", torch.float64)):
        converted = {key: value.to(dtype) for key, value in state.items()}
        save_legacy(converted, f"tiny_{suffix}_legacy.pth")
        torch.save(converted, path(f"tiny_{suffix}_zip.pth"))
        save_file(converted, path(f"tiny_{suffix}.safetensors"))
        if dtype != torch.bfloat16:  # numpy, hence h5py, has no bfloat16
            with h5py.File(path(f"tiny_{suffix}.h5"), "w") as f:
                for key, value in converted.items():
                    f.create_dataset(key, data=value.numpy())

    specials = torch.tensor([0.0, -0.0, 2.0 ** -24, 3 * 2.0 ** -24, 2.0 ** -14, 65504.0, -65504.0,
                             float("inf"), float("-inf"), 1.0 / 3], dtype=torch.float16)
    save_file({"specials": specials}, path("half_specials.safetensors"))
    save_legacy({"specials": specials}, "half_specials.pth")

    save_old_style_legacy(state, "old_style_legacy.pth")
    torch.save(state, path("protocol4_zip.pth"), pickle_protocol=4)

    torch.save({"epoch": 3, "best_accuracy": 0.75,
                "state_dict": {"module." + key: value for key, value in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1, 2, 3]}]}},
               path("checkpoint_wrapped.pth"))

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    shared = {"base": base, "transposed": base.t(), "rows_1_2": base[1:], "column_2": base[:, 2]}
    save_legacy(shared, "noncontiguous_legacy.pth")
    torch.save(shared, path("noncontiguous_zip.pth"))

    resnet_like = {
        "conv1.weight": torch.zeros(2, 3, 3, 3), "bn1.weight": torch.ones(2), "bn1.bias": torch.zeros(2),
        "bn1.running_mean": torch.zeros(2), "bn1.running_var": torch.ones(2),
        "bn1.num_batches_tracked": torch.tensor(0), "layer1.0.conv1.weight": torch.zeros(2, 2, 3, 3),
        "fc.weight": torch.zeros(3, 2), "fc.bias": torch.zeros(3),
    }
    torch.save(resnet_like, path("resnet_like.pth"))

    torch.manual_seed(0)
    torch.save(nn.Linear(2, 2), path("whole_module.pth"))

    with open(path("tiny_f16_legacy.pth"), "rb") as f:
        legacy = f.read()
    with open(path("truncated_legacy.pth"), "wb") as f:
        f.write(legacy[:-40])
    with open(path("tiny_f16_zip.pth"), "rb") as f:
        zipped = f.read()
    with open(path("truncated_zip.pth"), "wb") as f:
        f.write(zipped[: len(zipped) * 2 // 3])

    with zipfile.ZipFile(path("tiny_f16_zip.pth")) as source, \
            zipfile.ZipFile(path("compressed_zip.pth"), "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))

    with zipfile.ZipFile(path("protocol4_zip.pth")) as source:
        write_zip64([(info.filename, source.read(info.filename)) for info in source.infolist()], "zip64_zip.pth")

    with open(path("text_renamed.pth"), "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\noid sha256:397923af\nsize 553433881\n")
    with open(path("jpeg_renamed.pth"), "wb") as f:
        f.write(bytes([0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10]) + b"JFIF\x00" + bytes(64))

    header = json.dumps({"weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    with open(path("offsets_past_eof.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + bytes(16))


if __name__ == "__main__":
    main()
