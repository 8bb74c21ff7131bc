"""Generates the network parity fixtures: a narrow VGG16 (torchvision's topology and
module indices, channels divided by 16, hidden width 64, 10 classes), its state dict
in every weight format bottleneck reads, input batches, and torchvision's activations
at several cut layers.

Run from anywhere:  python3 Tests/Fixtures/network/make_network_fixtures.py
Needs torch, torchvision, safetensors, h5py. CI never runs this; it uses the outputs.

Outputs (all little-endian float32, shapes in manifest.json):
  narrow_vgg16_legacy.pth   torch.save(..., _use_new_zipfile_serialization=False)
  narrow_vgg16_zip.pth      torch.save(...) (zip format)
  narrow_vgg16.safetensors
  narrow_vgg16.h5           one dataset per state-dict key
  input_64.f32, input_32.f32                 [2, 3, S, S]
  act_<S>_<layer>.f32                         torchvision's activation after the cut layer (after its ReLU)
  manifest.json
"""
import json
import os

import h5py
import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models.vgg import VGG, make_layers

HERE = os.path.dirname(os.path.abspath(__file__))
NARROW_CFG_D = [4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"]
HIDDEN = 64
CLASSES = 10
# cut layers checked, as (name used by bottleneck, torchvision module path, index of the module in its Sequential)
CUTS = [
    ("conv1_1", "features", 1),   # after relu of features.0
    ("pool1", "features", 4),
    ("conv2_2", "features", 8),
    ("conv3_3", "features", 15),
    ("pool3", "features", 16),
    ("conv4_3", "features", 22),
    ("pool4", "features", 23),
    ("conv5_3", "features", 29),
    ("pool5", "features", 30),
    ("avgpool", "avgpool", 0),
    ("fc6", "classifier", 1),
    ("fc7", "classifier", 4),
    ("fc8", "classifier", 6),
]


def narrow_vgg16():
    torch.manual_seed(1234)
    model = VGG(make_layers(NARROW_CFG_D, batch_norm=False), num_classes=CLASSES, init_weights=True)
    model.classifier = nn.Sequential(
        nn.Linear(32 * 7 * 7, HIDDEN), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(HIDDEN, HIDDEN), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(HIDDEN, CLASSES),
    )
    # Non-zero biases and non-trivial weights everywhere, so a bias or
    # transposition bug cannot hide behind torchvision's zero bias init.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2.0 / fan_in) ** 0.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def activations(model, x):
    out = {}
    with torch.no_grad():
        h = x
        for i, layer in enumerate(model.features):
            h = layer(h)
            out[("features", i)] = h
        h = model.avgpool(h)
        out[("avgpool", 0)] = h
        h = torch.flatten(h, 1)
        for i, layer in enumerate(model.classifier):
            h = layer(h)
            out[("classifier", i)] = h
    return out


def write_f32(name, tensor):
    tensor.detach().contiguous().to(torch.float32).numpy().astype("<f4").tofile(os.path.join(HERE, name))
    return {"file": name, "shape": list(tensor.shape)}


def main():
    model = narrow_vgg16()
    state = model.state_dict()
    torch.save(state, os.path.join(HERE, "narrow_vgg16_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(state, os.path.join(HERE, "narrow_vgg16_zip.pth"))
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(HERE, "narrow_vgg16.safetensors"))
    with h5py.File(os.path.join(HERE, "narrow_vgg16.h5"), "w") as f:
        for key, value in state.items():
            f.create_dataset(key, data=value.numpy())

    manifest = {"config": NARROW_CFG_D, "hidden": HIDDEN, "classes": CLASSES,
                "state_dict": {k: list(v.shape) for k, v in state.items()}, "inputs": {}, "activations": {}}
    generator = torch.Generator().manual_seed(99)
    for size in (64, 32):
        x = torch.randn(2, 3, size, size, generator=generator)
        manifest["inputs"][str(size)] = write_f32(f"input_{size}.f32", x)
        acts = activations(model, x)
        for name, module, index in CUTS:
            manifest["activations"][f"{size}/{name}"] = write_f32(f"act_{size}_{name}.f32", acts[(module, index)])
    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
