"""Generates the training-core fixtures: a small linear head trained by torch.optim for a few steps,
its gradients and losses, and the per-epoch learning rates of torch's schedulers.

Run from anywhere:  python3 Tests/Fixtures/training/make_training_fixtures.py
Needs torch. CI never runs this; it uses the outputs.

The head is nn.Sequential(nn.Dropout(0.0), nn.Linear(32, 5)) in training mode with
nn.CrossEntropyLoss(): dropout is off so every step is deterministic. Each optimizer starts from the
same parameters and takes steps on the same batch.

Outputs (all little-endian float32, shapes in manifest.json):
  input.f32 [16, 32], weight.f32 [5, 32], bias.f32 [5]    the batch and the initial parameters
  grad_weight.f32, grad_bias.f32, grad_input.f32           gradients of the mean loss at the initial parameters
  <optimizer>_step<S>_{weight,bias}.f32                    parameters after S = 1 and 3 steps
  manifest.json   shapes, labels, loss, the losses seen before each step, hyperparameters, learning rates
"""
import json
import os

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, IN_FEATURES, CLASSES = 16, 32, 5
STEPS = 3
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
    "adam": (torch.optim.Adam, {"lr": 1e-3, "weight_decay": 1e-4}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
}
SCHEDULE_BASE_LR = 0.1
SCHEDULES = {
    "step": (torch.optim.lr_scheduler.StepLR, {"step_size": 3, "gamma": 0.1}, 12),
    "cosine": (torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": 10}, 15),
}


def write_f32(name, tensor):
    tensor.detach().contiguous().to(torch.float32).numpy().astype("<f4").tofile(os.path.join(HERE, name))
    return {"file": name, "shape": list(tensor.shape)}


def head(weight, bias):
    model = nn.Sequential(nn.Dropout(0.0), nn.Linear(IN_FEATURES, CLASSES))
    with torch.no_grad():
        model[1].weight.copy_(weight)
        model[1].bias.copy_(bias)
    return model.train()


def learning_rates(scheduler_class, arguments, epochs):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=SCHEDULE_BASE_LR)
    scheduler = scheduler_class(optimizer, **arguments)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def main():
    torch.manual_seed(2024)
    initial = nn.Linear(IN_FEATURES, CLASSES)
    x = torch.randn(BATCH, IN_FEATURES)
    labels = torch.randint(0, CLASSES, (BATCH,))
    loss_function = nn.CrossEntropyLoss()

    manifest = {"labels": labels.tolist(), "input": write_f32("input.f32", x),
                "weight": write_f32("weight.f32", initial.weight), "bias": write_f32("bias.f32", initial.bias),
                "optimizers": {}, "schedules": {"base_lr": SCHEDULE_BASE_LR}}

    model = head(initial.weight, initial.bias)
    x_leaf = x.clone().requires_grad_(True)
    loss = loss_function(model(x_leaf), labels)
    loss.backward()
    manifest["loss"] = loss.item()
    manifest["grad_weight"] = write_f32("grad_weight.f32", model[1].weight.grad)
    manifest["grad_bias"] = write_f32("grad_bias.f32", model[1].bias.grad)
    manifest["grad_input"] = write_f32("grad_input.f32", x_leaf.grad)

    for name, (optimizer_class, arguments) in OPTIMIZERS.items():
        model = head(initial.weight, initial.bias)
        optimizer = optimizer_class(model.parameters(), **arguments)
        entry = {"arguments": arguments, "losses": [], "after": {}}
        for step in range(1, STEPS + 1):
            optimizer.zero_grad()
            loss = loss_function(model(x), labels)
            loss.backward()
            optimizer.step()
            entry["losses"].append(loss.item())
            if step in (1, STEPS):
                entry["after"][str(step)] = {
                    "weight": write_f32(f"{name}_step{step}_weight.f32", model[1].weight),
                    "bias": write_f32(f"{name}_step{step}_bias.f32", model[1].bias),
                }
        manifest["optimizers"][name] = entry

    for name, (scheduler_class, arguments, epochs) in SCHEDULES.items():
        manifest["schedules"][name] = {"arguments": arguments,
                                       "learning_rates": learning_rates(scheduler_class, arguments, epochs)}

    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
