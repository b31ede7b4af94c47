"""medzoo: train a zoo of medical image classifiers, combine them into ensembles, rank them, submit.

The entry points a script needs are importable from here::

    import medzoo

    cfg = medzoo.load_config("my_zoo.toml")      # the whole config is checked here
    report = medzoo.check(cfg)                     # decode every image, leaks, the plan
    medzoo.train_zoo(cfg)                          # results/<run>/members/<id>/
    medzoo.build_ensembles(f"results/{cfg.run}", config=cfg.ensemble)   # results/<run>/ensembles/<method>/
    board = medzoo.write_leaderboard(f"results/{cfg.run}")
    sub = medzoo.submit_run(f"results/{cfg.run}")
    new = medzoo.predict_run(f"results/{cfg.run}", "new_images/", entry="stacking")   # a fitted entry, new images
    medzoo.explain_run(f"results/{cfg.run}", entry="stacking")    # heatmaps: explain/stacking/grid.png
    medzoo.embed_run(f"results/{cfg.run}", "resnet18")             # t-SNE: plots/embedding_resnet18_test.png
    medzoo.write_report(f"results/{cfg.run}")                      # results/<run>/report.html

They are loaded on first use, so ``import medzoo`` (and ``medzoo.ensemble``, which never
imports torch) stays light. The subpackages are ``medzoo.zoo`` (models, datasets, training),
``medzoo.ensemble`` (probability tables and combiners) and ``medzoo.benchmarks`` (metrics,
leaderboards, submissions, the command line).
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

API = {
    "create_model": "medzoo.zoo.models",
    "list_models": "medzoo.zoo.models",
    "load_config": "medzoo.config",
    "parse_config": "medzoo.zoo.config",
    "open_dataset": "medzoo.zoo.datasets",
    "load_card": "medzoo.zoo.datasets",
    "check": "medzoo.zoo.check",
    "train_zoo": "medzoo.zoo.schedule",
    "predict_run": "medzoo.zoo.apply",
    "explain_run": "medzoo.zoo.explain",
    "embed_run": "medzoo.zoo.embedding",
    "ProbabilityTable": "medzoo.ensemble.table",
    "build_ensembles": "medzoo.ensemble.run",
    "write_leaderboard": "medzoo.benchmarks.leaderboard",
    "write_submission": "medzoo.benchmarks.submission",
    "submit_run": "medzoo.benchmarks.submission",
    "score_submission": "medzoo.benchmarks.scoring",
    "run_bench": "medzoo.benchmarks.bench",
    "write_report": "medzoo.benchmarks.report",
}
__all__ = sorted(API)


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'medzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
