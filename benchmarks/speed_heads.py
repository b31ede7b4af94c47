"""Training speed of the small-input heads against torchvision's, from scratch at a small input size.

For each model with a ``small`` head (``medzoo models`` lists them), the same training step
(:func:`benchmarks.speed_train.step`: forward, cross-entropy, backward, AdamW) is timed with
torchvision's head and with the small one, on the same random batches; the two alternate batch
by batch, so a shared machine's load hits both alike. Prints images/s of each and their ratio
(small / torchvision), and the parameter counts.

    python -m medzoo.benchmarks.speed_heads                  # vgg11_bn and squeezenet1_1 at 32 px
    python -m medzoo.benchmarks.speed_heads --models vgg11_bn --size 64 --threads 1
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from medzoo.benchmarks.speed_train import make_model, step, synchronize
from medzoo.zoo.models import create_model, model_info

HEADS = ("torchvision", "small")


def time_heads(name: str, size: int, batch: int, batches: int, device: str = "cpu") -> dict[str, float]:
    """``{head: images per second}`` of ``batches`` timed steps per head (after one warm-up step each)."""
    built = {head: make_model(name, seed=0, device=device, head=head) for head in HEADS}
    g = torch.Generator().manual_seed(0)
    seconds = dict.fromkeys(HEADS, 0.0)
    for i in range(batches + 1):
        x = torch.randn(batch, 3, size, size, generator=g).to(device)
        y = torch.randint(0, 2, (batch,), generator=g).to(device)
        for head, (model, optimizer) in built.items():
            synchronize(device)
            start = time.perf_counter()
            step(model, optimizer, x, y)
            synchronize(device)
            if i:  # the first step of each warms up
                seconds[head] += time.perf_counter() - start
    return {head: batch * batches / seconds[head] for head in HEADS}


def parameters(name: str) -> dict[str, int]:
    """``{head: parameter count}`` with a 2-class head."""
    with torch.device("meta"):
        return {head: sum(p.numel() for p in create_model(name, num_classes=2, head=head).parameters())
                for head in HEADS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg11_bn", "squeezenet1_1"])
    parser.add_argument("--size", type=int, default=32, help="input size (px)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="timed steps per head")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.models:
        if "small" not in model_info(name).heads:
            parser.error(f"{name} has no small head; models with one: vgg*, squeezenet*")
    print(f"from scratch at {args.size} px, batch {args.batch_size}, {args.batches} steps per head, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'model':<15} {'params tv (M)':>13} {'small (M)':>10} {'tv img/s':>9} {'small img/s':>11} {'ratio':>6}")
    for name in args.models:
        rate, count = time_heads(name, args.size, args.batch_size, args.batches), parameters(name)
        print(f"{name:<15} {count['torchvision'] / 1e6:>13.2f} {count['small'] / 1e6:>10.2f} "
              f"{rate['torchvision']:>9.1f} {rate['small']:>11.1f} {rate['small'] / rate['torchvision']:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
