"""Does ``torch.compile`` pay back its compile time within one member's training in ``make bench``?

For each model, the same training step (:func:`benchmarks.speed_train.step`: forward, cross-entropy,
backward, AdamW) runs eagerly and through ``torch.compile`` on the same random batches, the two
alternating batch by batch so a shared machine's load hits both alike. The compiled model's first
step holds the compile; it is timed on its own. Prints, per model, the steady images/s of each, their
ratio (compiled / eager), the compile seconds and the steps it takes to earn them back
(``compile / (eager step - compiled step)``), against the steps the member trains in
``benchmarks/pneumoniamnist.toml`` (its epochs x 60 batches of 64).

    python -m medzoo.benchmarks.speed_compile                        # resnet18 at 48 px, squeezenet1_1 at 64 px
    python -m medzoo.benchmarks.speed_compile --models resnet18:32 --batches 20
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch

from medzoo.benchmarks.speed_train import make_model, step, synchronize
from medzoo.config import load_config

BENCH_BATCHES = 60  # batches of 64 per epoch of PneumoniaMNIST's 3,882 training images (the last partial one dropped)


def time_compile(name: str, size: int, batch: int, batches: int, device: str = "cpu") -> dict[str, float]:
    """``{"eager", "compiled"}`` seconds per steady step and ``"compile"``: the compiled first step's extra seconds."""
    eager = make_model(name, seed=0, device=device)
    model, optimizer = make_model(name, seed=0, device=device)
    compiled = (torch.compile(model), optimizer)
    g = torch.Generator().manual_seed(0)
    seconds = {"eager": 0.0, "compiled": 0.0}
    first = {}
    for i in range(batches + 1):
        x = torch.randn(batch, 3, size, size, generator=g).to(device)
        y = torch.randint(0, 2, (batch,), generator=g).to(device)
        for kind, (m, opt) in (("eager", eager), ("compiled", compiled)):
            synchronize(device)
            start = time.perf_counter()
            step(m, opt, x, y)
            synchronize(device)
            took = time.perf_counter() - start
            if i:
                seconds[kind] += took
            else:
                first[kind] = took
    per = {kind: s / batches for kind, s in seconds.items()}
    return {**per, "compile": first["compiled"] - per["compiled"]}


def bench_steps(models: list[str]) -> dict[str, int]:
    """Training steps of each model in the shipped PneumoniaMNIST config (epochs x 60)."""
    cfg = load_config("pneumoniamnist")
    return {m.model: m.train.epochs * BENCH_BATCHES for m in cfg.members if m.model in models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18:48", "squeezenet1_1:64"], metavar="MODEL:SIZE")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="timed steady steps per mode")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = []
    for m in args.models:
        name, _, size = m.partition(":")
        if not (size or "32").isdigit():
            parser.error(f"--models {m!r}: expected MODEL:SIZE with SIZE in pixels, e.g. resnet18:48")
        models.append((name, int(size or 32)))
    steps = bench_steps([m for m, _ in models])
    print(f"batch {args.batch_size}, {args.batches} steady steps per mode, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}")
    print(f"{'model':<15} {'px':>4} {'eager img/s':>11} {'compiled':>9} {'ratio':>6} {'compile s':>9} "
          f"{'break-even steps':>16} {'bench steps':>11}")
    for name, size in models:
        t = time_compile(name, size, args.batch_size, args.batches)
        saved = t["eager"] - t["compiled"]
        even = math.ceil(t["compile"] / saved) if saved > 0 else "never"
        print(f"{name:<15} {size:>4} {args.batch_size / t['eager']:>11.1f} {args.batch_size / t['compiled']:>9.1f} "
              f"{t['eager'] / t['compiled']:>6.2f} {t['compile']:>9.1f} {even!s:>16} {steps.get(name, '-')!s:>11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
