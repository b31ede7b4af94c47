"""Ensemble speed: vectorised aggregators and subset search against per-image Python and a sklearn loop.

In one run, on generated tables (each member a noisy view of the labels, 30 % positives):
  (a) every aggregator on --images (1,000,000) images x --members (10) members x 2 classes; target < 1 s each;
  (b) the seed tutorial's way, per image in Python with dicts keyed by image id, for the mean and for
      softmax-AUC weighting: timed on --baseline-images (100,000) images and scaled linearly to --images
      (one pass per image, so linear), ratio against (a); target >= 50x;
  (c) the exhaustive subset search (``SubsetSearch.fit``: all 2^M - 1 subsets under every default
      aggregator) on --val-images (100,000) validation images; target < 10 s;
  (d) a loop over subsets, each averaged with numpy and scored with ``sklearn.metrics.roc_auc_score``:
      timed on --baseline-subsets (40) random subsets and scaled to 2^M - 1 subsets x the aggregators
      (assumes every aggregator costs what the mean does per subset, which favours the loop), ratio against (c).
The exact AUCs of (c) are checked against sklearn on the sampled subsets. Times are wall clock; the
CPU seconds of this process are shown beside them, since other jobs may share the machine.

    .venv/bin/python benchmarks/speed_ensemble.py
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from medzoo.ensemble.aggregators import AGGREGATORS, DEFAULT_TEMPERATURE, get_aggregator, validation_aucs
from medzoo.ensemble.combiners import SubsetSearch, all_subsets, subset_aucs
from medzoo.ensemble.table import ProbabilityTable


def make_members(m: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(probs [M, N, 2], labels [N])``: member m's logit is ``a_m * (2y - 1) + noise``, a_m in [0.15, 0.6]."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    strength = np.linspace(0.15, 0.6, m)[:, None]
    p1 = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(size=(m, n)))))
    return np.stack([1 - p1, p1], axis=2), y


def params_for(name: str, probs: np.ndarray, aucs: np.ndarray) -> dict:
    """The inputs an aggregator needs beyond ``probs``, read off its registry metadata."""
    entry = AGGREGATORS[name]
    if entry.get("weighted"):
        return {"weights": np.arange(1, probs.shape[0] + 1, dtype=float)}
    if entry.get("needs_aucs"):
        return {"aucs": aucs}
    return {}


CPU = {}


def timed(fn):
    """``(wall seconds, result)``; the CPU seconds of this process go to ``CPU["last"]``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    CPU["last"] = time.process_time() - c0
    return time.perf_counter() - t0, out


def python_mean(preds: dict, ids: list[str], members: list[str], c: int) -> dict:
    """The tutorial's mean: for each image id, average the members' probabilities."""
    out = {}
    for img in ids:
        out[img] = [sum(preds[m][img][k] for m in members) / len(members) for k in range(c)]
    return out


def python_softmax_auc(preds: dict, ids: list[str], members: list[str], aucs: dict, c: int, temperature: float) -> dict:
    """The tutorial's Softmax(AUC x T) weighting, per image id."""
    e = {m: math.exp(temperature * (aucs[m] - max(aucs.values()))) for m in members}
    w = {m: e[m] / sum(e.values()) for m in members}
    out = {}
    for img in ids:
        out[img] = [sum(w[m] * preds[m][img][k] for m in members) for k in range(c)]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--val-images", type=int, default=100_000)
    ap.add_argument("--baseline-images", type=int, default=100_000)
    ap.add_argument("--baseline-subsets", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(f"cpus {os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f} (other jobs share this machine)")
    time_aggregators(args)
    time_subset_search(args)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


def time_aggregators(args) -> None:
    """(a) every aggregator vectorised, and (b) the per-image Python baseline, scaled to the same size."""
    m = args.members
    probs, y = make_members(m, args.images, args.seed)
    aucs = validation_aucs(*make_members(m, 20_000, args.seed + 1))
    print(f"\n(a) aggregators on {args.images:,} images x {m} members x 2 classes (target < 1 s each)")
    times = {}
    for name in AGGREGATORS.names():
        agg = get_aggregator(name)
        times[name], _ = timed(lambda: agg(probs, **params_for(name, probs, aucs)))
        print(f"  {name:20s} {times[name]:7.3f} s (cpu {CPU['last']:6.3f} s)  {'ok' if times[name] < 1 else 'OVER TARGET'}")

    nb = min(args.baseline_images, args.images)
    ids = [f"img{i:07d}" for i in range(nb)]
    names = [f"m{j}" for j in range(m)]
    preds = {names[j]: dict(zip(ids, probs[j, :nb].tolist())) for j in range(m)}
    auc_by_member = dict(zip(names, aucs.tolist()))
    scale = args.images / nb
    print(f"\n(b) per-image Python with dicts keyed by image id, timed on {nb:,} images, scaled x{scale:g} "
          f"to {args.images:,} (target >= 50x)")
    t_mean, out_mean = timed(lambda: python_mean(preds, ids, names, 2))
    t_soft, out_soft = timed(lambda: python_softmax_auc(preds, ids, names, auc_by_member, 2, DEFAULT_TEMPERATURE))
    check_mean = np.abs(np.array([out_mean[i] for i in ids]) - get_aggregator("mean")(probs[:, :nb])).max()
    check_soft = np.abs(np.array([out_soft[i] for i in ids]) - get_aggregator("softmax_auc")(probs[:, :nb], aucs=aucs)).max()
    for label, t, name, diff in (("mean", t_mean, "mean", check_mean), ("softmax-AUC", t_soft, "softmax_auc", check_soft)):
        print(f"  {label:12s} python {t:7.3f} s on {nb:,} -> {t * scale:7.2f} s at {args.images:,};  "
              f"vectorised {times[name]:.3f} s;  ratio {t * scale / times[name]:6.1f}x  (max |diff| {diff:.1e})")


def time_subset_search(args) -> None:
    """(c) the exhaustive subset search, and (d) a numpy + sklearn loop over subsets, scaled to all of them."""
    m = args.members
    names = [f"m{j}" for j in range(m)]
    vprobs, vy = make_members(m, args.val_images, args.seed + 2)
    vids = [str(i) for i in range(args.val_images)]
    tables = [ProbabilityTable(vids, ["neg", "pos"], vprobs[j], vy, {"member": names[j], "split": "val"})
              for j in range(m)]
    masks = all_subsets(m)
    search = SubsetSearch()
    search.out_of_fold = False  # time the search itself; its out-of-fold score repeats it once per fold
    print(f"\n(c) subset search: {len(masks)} subsets x default aggregators on {args.val_images:,} validation images "
          f"(target < 10 s; one search, without the K refits of its out-of-fold validation score)")
    t_search, _ = timed(lambda: search.fit(tables))
    n_aggs = len(search.info_["best_val_auc_per_aggregator"])
    print(f"  SubsetSearch.fit       {t_search:7.3f} s (cpu {CPU['last']:6.3f} s)  ({search.info_['subsets_scored']} (aggregator, subset) pairs, "
          f"{search.info_['exact_aucs']} scored exactly)  {'ok' if t_search < 10 else 'OVER TARGET'}")
    print(f"  best: {search.info_['aggregator']} of {search.info_['selected']}, val AUC {search.info_['top'][0]['val_auc']:.6f}")
    vaucs = validation_aucs(vprobs, vy)
    for name in search.info_["best_val_auc_per_aggregator"]:
        extra = {"aucs": vaucs} if AGGREGATORS[name].get("needs_aucs") else {}
        t_pass, _ = timed(lambda: subset_aucs(vprobs, vy, name, masks, bounds=True, **extra))
        print(f"    bounds pass alone, {name:20s} {t_pass:6.3f} s (cpu {CPU['last']:6.3f} s) for {len(masks)} subsets")

    rng = np.random.default_rng(args.seed)
    sample = masks[rng.choice(len(masks), min(args.baseline_subsets, len(masks)), replace=False)]
    t_loop, sk = timed(lambda: [roc_auc_score(vy, vprobs[mask].mean(axis=0)[:, 1]) for mask in sample])
    ours = subset_aucs(vprobs, vy, "mean", sample)
    per_subset = t_loop / len(sample)
    t_mean_search, _ = timed(lambda: subset_aucs(vprobs, vy, "mean", masks, bounds=True))
    print(f"\n(d) loop over subsets: numpy mean + sklearn roc_auc_score, timed on {len(sample)} subsets "
          f"({per_subset * 1e3:.1f} ms each)")
    print(f"  mean only:        loop {per_subset * len(masks):7.2f} s for {len(masks)} subsets;  "
          f"vectorised bounds pass {t_mean_search:.3f} s;  ratio {per_subset * len(masks) / t_mean_search:6.1f}x")
    print(f"  all aggregators:  loop {per_subset * len(masks) * n_aggs:7.2f} s for {len(masks)} x {n_aggs} "
          f"(scaled);  SubsetSearch.fit {t_search:.3f} s;  ratio {per_subset * len(masks) * n_aggs / t_search:6.1f}x")
    print(f"  exact subset AUCs vs sklearn on the sample: max |diff| {np.abs(ours - np.array(sk)).max():.1e}")


if __name__ == "__main__":
    main()
