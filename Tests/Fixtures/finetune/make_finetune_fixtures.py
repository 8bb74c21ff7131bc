"""Generates the full fine-tuning parity fixtures: the narrow VGG16 of ../network (its committed
narrow_vgg16_legacy.pth weights, 10 classes) after one SGD step on ../network/input_64.f32, as torch takes
it, and torch's max-pool gradient on tied and NaN inputs.

Run from anywhere:  python3 Tests/Fixtures/finetune/make_finetune_fixtures.py
Needs torch and torchvision. CI never runs this; it uses the outputs.

Outputs (little-endian float32, shapes in manifest.json):
  full_<key>.f32     after one step with everything trainable (SGD lr 0.05, momentum 0.9, weight decay 5e-4,
                     dropout 0, train mode, labels [3, 7])
  frozen_<key>.f32   the same step with features.0-15 frozen (requires_grad=False, optimizer on the rest)
  pool_input.f32, pool_grad_output.f32, pool_grad_input.f32   max_pool2d(2, 2) backward with ties and a NaN
  manifest.json
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
NETWORK = os.path.join(HERE, "..", "network")
sys.path.insert(0, NETWORK)
from make_network_fixtures import narrow_vgg16  # noqa: E402  (the same construction as the network fixtures)

LABELS = [3, 7]
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
CHECKED = ["features.0", "features.12", "features.17", "classifier.0", "classifier.6"]
FROZEN_THROUGH = 15  # relu3_3: features.0 … features.15


def write_f32(name, tensor):
    tensor.detach().contiguous().to(torch.float32).numpy().astype("<f4").tofile(os.path.join(HERE, name))
    return {"file": name, "shape": list(tensor.shape)}


def one_step(frozen_through):
    model = narrow_vgg16()
    model.load_state_dict(torch.load(os.path.join(NETWORK, "narrow_vgg16_legacy.pth")))
    for module in model.classifier:
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    for index, module in enumerate(model.features):
        if index <= frozen_through:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    x = torch.from_numpy(__import__("numpy").fromfile(os.path.join(NETWORK, "input_64.f32"), dtype="<f4")).reshape(2, 3, 64, 64)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor(LABELS))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return model.state_dict(), loss.item()


def main():
    manifest = {"labels": LABELS, "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
                "frozen_through": f"features.{FROZEN_THROUGH}", "full": {}, "frozen": {}}
    for variant, frozen_through in (("full", -1), ("frozen", FROZEN_THROUGH)):
        state, loss = one_step(frozen_through)
        manifest[f"{variant}_loss"] = loss
        for layer in CHECKED:
            for kind in ("weight", "bias"):
                key = f"{layer}.{kind}"
                manifest[variant][key] = write_f32(f"{variant}_{key}.f32", state[key])

    # Ties everywhere (a window of equal values, two equal maxima) and a NaN, as torch's CPU kernel routes them.
    pool_input = torch.tensor([[[[1., 1., 2., 5., 0., 0.],
                                 [1., 1., 5., 2., 0., -1.],
                                 [3., float("nan"), 7., 7., -2., -2.],
                                 [float("nan"), 3., 7., 7., -2., -2.]]]], requires_grad=True)
    out = torch.nn.functional.max_pool2d(pool_input, 2, 2)
    grad_output = torch.arange(1., 1. + out.numel()).reshape(out.shape)
    out.backward(grad_output)
    manifest["pool"] = {"input": write_f32("pool_input.f32", pool_input), "grad_output": write_f32("pool_grad_output.f32", grad_output),
                        "grad_input": write_f32("pool_grad_input.f32", pool_input.grad)}
    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
