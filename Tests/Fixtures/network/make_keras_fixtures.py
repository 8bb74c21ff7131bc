"""Writes the narrow VGG16 of make_network_fixtures.py as keras.applications lays out its VGG16 weight files
(`vgg16_weights_tf_dim_ordering_tf_kernels.h5` and `..._notop.h5`), from the committed narrow_vgg16.h5, so that
bottleneck's Keras reader can be checked against the torch-layout fixture. Needs h5py and numpy, not torch.

Run from anywhere:  python3 Tests/Fixtures/network/make_keras_fixtures.py

Outputs:
  narrow_vgg16_keras.h5        the whole network, as keras 1/2.0 saved it: layer groups at the root, datasets named
                               `block1_conv1_W_1:0` / `block1_conv1_b_1:0` beside layer_names entries without weights
                               (input, pools, flatten) whose weight_names is an empty float64 array, as Keras writes it
  narrow_vgg16_keras_notop.h5  the conv blocks only, as a later keras saved a whole model: everything under
                               `model_weights`, datasets nested as `block1_conv1/kernel:0`
  ../weights/keras_*.h5        damaged files of the first few convolutions, one fault each (see hostile_files)
  ../weights/string_array_attribute.h5  a bottleneck-layout state dict whose root carries an array of strings beside a
                               string, as Keras's root does: the array once overflowed the one-string read of metadata

The Keras model is the one whose conversion gives the torch fixture back: conv kernels HWIO (torch's OIHW
transposed), dense kernels [in, out] with fc1's rows in channels-last (H, W, C) flatten order, and the first
convolution's input channels in BGR order, as a caffe-trained Keras VGG expects its input.
"""
import os

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONV_BLOCKS = [2, 2, 3, 3, 3]  # VGG16's convolutions per block, torchvision's features.* in order
DENSE = [("fc1", "classifier.0"), ("fc2", "classifier.3"), ("predictions", "classifier.6")]


def keras_layers(state):
    """(layer name, [kernel, bias] or []) in model order, as keras.applications.VGG16 names its layers."""
    layers = [("input_1", [])]
    index = 0
    for block, convs in enumerate(CONV_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            weight = state[f"features.{index}.weight"]  # [out, in, 3, 3]
            kernel = weight.transpose(2, 3, 1, 0)       # [3, 3, in, out]
            if index == 0:
                kernel = kernel[:, :, ::-1, :]          # RGB → BGR input channels
            layers.append((f"block{block}_conv{conv}", [kernel, state[f"features.{index}.bias"]]))
            index += 2
        layers.append((f"block{block}_pool", []))
        index += 1
    channels = state["features.28.weight"].shape[0]
    layers.append(("flatten", []))
    for name, key in DENSE:
        weight = state[f"{key}.weight"]                 # [out, in]
        if key == "classifier.0":
            grid = int(round((weight.shape[1] // channels) ** 0.5))
            # torch's columns are (C, H, W); Keras's rows are (H, W, C).
            weight = weight.reshape(-1, channels, grid, grid).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
        layers.append((name, [weight.T, state[f"{key}.bias"]]))
    return layers


def write(path, layers, nested_names, under_model_weights):
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4" if nested_names else b"1.2.2"
        root = f.create_group("model_weights") if under_model_weights else f
        root.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        for name, weights in layers:
            group = root.create_group(name)
            if nested_names:
                names = [f"{name}/kernel:0", f"{name}/bias:0"][:len(weights)]
            else:
                names = [f"{name}_W_1:0", f"{name}_b_1:0"][:len(weights)]
            # Keras saves np.asarray(names): an empty list becomes an empty float64 array.
            group.attrs["weight_names"] = np.asarray([n.encode() for n in names])
            for weight_name, value in zip(names, weights):
                group.create_dataset(weight_name, data=np.ascontiguousarray(value, dtype="<f4"))


def hostile_files(layers):
    """name → (layers, attribute override) of files each wrong in one way the reader must name."""
    small = layers[:5]  # input_1, block1_conv1, block1_conv2, block1_pool, block2_conv1
    kernel, bias = small[2][1]
    return {
        "keras_missing_group.h5": (small, {"drop_group": "block1_conv2"}),
        # A block's last convolution missing looks like the next block starting: only one inside a block shows.
        "keras_missing_layer.h5": ([layer for layer in layers[:11] if layer[0] != "block3_conv2"], {}),
        "keras_wrong_kernel.h5": (small[:2] + [("block1_conv2", [kernel[:, :, :3, :], bias])] + small[3:], {}),
        "keras_wrong_bias.h5": (small[:2] + [("block1_conv2", [kernel, bias[:2]])] + small[3:], {}),
        "keras_numeric_layer_names.h5": (small, {"layer_names": np.arange(5, dtype="<f8")}),
        "keras_missing_weight.h5": (small, {"weight_names": ("block1_conv2", [b"block1_conv2_W_1:0", b"nothing:0"])}),
        "keras_huge.h5": (small[:3], {"huge": "block1_conv2"}),
        "keras_empty_kernel.h5": (small[:2] + [("block1_conv2", [kernel[:, :, :, :0], bias[:0]])] + small[3:], {}),
    }


def write_hostile(path, layers, fault):
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = fault.get("layer_names", np.array([name.encode() for name, _ in layers]))
        for name, weights in layers:
            if fault.get("drop_group") == name:
                continue
            group = f.create_group(name)
            names = [f"{name}_W_1:0", f"{name}_b_1:0"][:len(weights)]
            group.attrs["weight_names"] = np.asarray([n.encode() for n in names])
            if fault.get("huge") == name:
                # Chunked and never written: shapes of 2^40 values in a file of a few kB.
                group.create_dataset(names[0], shape=(3, 3, 4, 2**40), dtype="<f4", chunks=(1, 1, 1, 1024))
                group.create_dataset(names[1], shape=(2**40,), dtype="<f4", chunks=(1024,))
                continue
            for weight_name, value in zip(names, weights):
                group.create_dataset(weight_name, data=np.ascontiguousarray(value, dtype="<f4"))
        if "weight_names" in fault:
            layer, names = fault["weight_names"]
            f[layer].attrs["weight_names"] = np.array(names)


def main():
    with h5py.File(os.path.join(HERE, "narrow_vgg16.h5"), "r") as f:
        state = {key: f[key][()] for key in f.keys()}
    layers = keras_layers(state)
    write(os.path.join(HERE, "narrow_vgg16_keras.h5"), layers, nested_names=False, under_model_weights=False)
    notop = [layer for layer in layers if layer[0] not in ("flatten", "fc1", "fc2", "predictions")]
    write(os.path.join(HERE, "narrow_vgg16_keras_notop.h5"), notop, nested_names=True, under_model_weights=True)
    for name, (hostile_layers, fault) in hostile_files(layers).items():
        write_hostile(os.path.join(HERE, "..", "weights", name), hostile_layers, fault)
    with h5py.File(os.path.join(HERE, "..", "weights", "string_array_attribute.h5"), "w") as f:
        f.attrs["source"] = np.bytes_(b"make_keras_fixtures.py")
        f.attrs["names"] = np.array([b"a" * 64, b"b" * 64, b"c" * 64])
        f.create_dataset("features.0.bias", data=state["features.0.bias"])


if __name__ == "__main__":
    main()
