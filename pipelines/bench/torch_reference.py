"""PyTorch's side of `bottleneck bench`: the same jobs, same sizes, same machine.

    python3 pipelines/bench/torch_reference.py forward [--batch-size 8] [--channels-last]
    python3 pipelines/bench/torch_reference.py finetune [--batch-size 8] [--freeze-through conv4_3|fc7]
    python3 pipelines/bench/torch_reference.py head [--batch-size 64]

Prints img/s (or samples/s) and peak RSS. Random weights: speed does not depend on them.
"""
import argparse
import resource
import time

import torch
import torchvision


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(run, iterations, report=None):
    """Runs `run` once untimed, then `iterations` timed times; the median seconds. `report(i, seconds)` sees each."""
    times = []
    for i in range(iterations + 1):
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        if report:
            report(i, seconds)
        if i > 0:
            times.append(seconds)
    return sorted(times)[len(times) // 2]


def forward(args):
    model = torchvision.models.vgg16().eval()
    extractor = torch.nn.Sequential(model.features, model.avgpool, torch.nn.Flatten(1), *list(model.classifier)[:5])
    x = torch.randn(args.batch_size, 3, 224, 224)
    if args.channels_last:
        extractor = extractor.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        median = median_seconds(lambda: extractor(x), args.iterations)
    print(f"torch forward to fc7: {args.batch_size / median:.2f} img/s (batch {args.batch_size}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, {torch.get_num_threads()} threads), "
          f"peak RSS {peak_rss_mb():.0f} MB")


# bottleneck's --freeze-through names: the module (features.N / classifier.N) through which parameters freeze.
FREEZE_THROUGH = {"conv4_3": ("features", 22), "pool4": ("features", 23), "pool5": ("features", 30), "fc7": ("classifier", 4)}


def finetune(args):
    model = torchvision.models.vgg16(num_classes=10).train()
    if args.freeze_through:
        part, last = FREEZE_THROUGH[args.freeze_through]
        frozen = list(model.features) + (list(model.classifier)[:last + 1] if part == "classifier" else [])
        if part == "features":
            frozen = frozen[:last + 1]
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch_size, 3, 224, 224)
    y = torch.randint(0, 10, (args.batch_size,))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    median = median_seconds(step, args.iterations)
    print(f"torch full fine-tune step: {args.batch_size / median:.2f} img/s (batch {args.batch_size}, "
          f"frozen through {args.freeze_through or 'nothing'}), "
          f"peak RSS {peak_rss_mb():.0f} MB")


def head(args):
    """As `bottleneck bench head`: shuffled rows every epoch (gathered by index, the fastest torch idiom,
    no DataLoader), one untimed epoch, then the median of --iterations timed epochs."""
    torch.manual_seed(0)
    features = torch.randn(20000, 4096)
    labels = torch.randint(0, 10, (20000,))
    head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(4096, 10))
    optimizer = torch.optim.SGD(head.parameters(), lr=1e-2, momentum=0.9)

    def epoch():
        order = torch.randperm(20000)
        for first in range(0, 20000, args.batch_size):
            rows = order[first:first + args.batch_size]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(features[rows]), labels[rows]).backward()
            optimizer.step()

    def report(i, seconds):
        print(f"  epoch {i + 1}{' (untimed)' if i == 0 else ''}: {20000 / seconds:.0f} samples/s")

    median = median_seconds(epoch, args.iterations, report)
    print(f"torch head: {20000 / median:.0f} samples/s (batch {args.batch_size}, {torch.get_num_threads()} threads)")

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("job", choices=["forward", "finetune", "head"])
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--freeze-through", choices=sorted(FREEZE_THROUGH))
    args = parser.parse_args()
    args.batch_size = args.batch_size or (64 if args.job == "head" else 8)
    {"forward": forward, "finetune": finetune, "head": head}[args.job](args)
