"""What a member has learnt to separate: a t-SNE map of its penultimate features on the test or val split.

:func:`penultimate_features` takes the input of a model's final classifier layer (:func:`final_layer`)
through a forward pre-hook. :func:`embed_run` loads a run's member entry the way
:mod:`medzoo.zoo.apply` does (the kept checkpoint its table's sidecar records, at its recorded input
size, in full precision; no TTA: the features are those of each image as it is), reads the split's
images from the run's dataset as training decoded them, maps the features to 2-D with scikit-learn's
t-SNE and writes ``RUN_DIR/plots/embedding_<member>_<split>.png`` (points coloured by true class,
misclassified images marked with a black x) and ``RUN_DIR/embeddings/<member>_<split>.csv``.

Predictions (and so the misclassified marks) come from the member's own table: the argmax of its
probabilities, with its TTA when it was trained with one. A cross-validated member (K fold units) is
mapped through the model of its first fold unit alone, since K models make K feature spaces: on test
that model's own test table, on val its own table of the images it held out (its fold of train+val);
the plot's title says so.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from torch import nn

from medzoo.core.figures import save_png
from medzoo.core.fileio import write_text
from medzoo.core.names import unknown_name
from medzoo.core.rundir import RunDir
from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo.apply import load_unit, member_plan, run_entries, run_images
from medzoo.zoo.device import resolve_device
from medzoo.zoo.loader import BatchLoader

SPLITS = ("test", "val")
MIN_IMAGES = 4  # below, the perplexity cap (N - 1) / 3 falls under 1
CSV_COLUMNS = ("id", "x", "y", "label", "pred", "prob")


@dataclass(frozen=True)
class Embedding:
    """One member's t-SNE map of one split.

    Attributes:
        member: the member entry; ``unit``: the training unit whose model made the features.
        split: "test" or "val".
        classes: ``[C]`` class names.
        ids: ``[N]`` image ids, in the order of the table the predictions come from.
        features: float32 ``[N, D]`` penultimate features.
        coords: float64 ``[N, 2]`` t-SNE coordinates.
        labels: int64 ``[N]`` true classes (-1 unknown); ``preds``: int64 ``[N]`` the table's argmax;
            ``prob``: float64 ``[N]`` the table's probability of ``preds``.
        perplexity: the perplexity t-SNE ran with; ``seed``: its random state.
        title: the plot's title; ``png``, ``csv``: the files written.
    """

    member: str
    unit: str
    split: str
    classes: list[str]
    ids: list[str]
    features: np.ndarray
    coords: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    prob: np.ndarray
    perplexity: float
    seed: int
    title: str
    png: Path
    csv: Path

    @property
    def labelled(self) -> bool:
        """Whether every image has a known label (points are then coloured by true class, else by prediction)."""
        return bool((self.labels >= 0).all())

    @property
    def misclassified(self) -> np.ndarray:
        """bool ``[N]``: a known label that the table's argmax misses."""
        return (self.labels >= 0) & (self.preds != self.labels)


def final_layer(model: nn.Module) -> nn.Module:
    """The layer that makes a medzoo model's logits, with either head.

    ``fc`` (ResNet, Inception), ``classifier`` when it is one Linear (DenseNet), else the last Linear or
    Conv2d of ``classifier`` (VGG: its last Linear; SqueezeNet: the 1x1 conv). ValueError for another model.
    """
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    layers = [m for m in head if isinstance(m, (nn.Linear, nn.Conv2d))] if isinstance(head, nn.Sequential) else []
    if not layers:
        raise ValueError(f"{type(model).__name__} has neither an fc Linear nor a classifier ending in a Linear or "
                         f"Conv2d; its penultimate features are not known")
    return layers[-1]


@torch.no_grad()
def penultimate_features(model: nn.Module, images: np.ndarray, *, mean, std, device: torch.device,
                         batch_size: int = 64, channels_last: bool = False) -> np.ndarray:
    """images uint8 ``[N, S, S, 3]`` -> float32 ``[N, D]``: the input of :func:`final_layer`, image by image.

    The model runs in eval mode, in full precision, on each image as it is (no TTA), normalised with
    ``mean``/``std`` as predictions are. ``D`` is the final layer's ``in_features`` (``in_channels`` for
    SqueezeNet's conv, whose input ``[B, D, h, w]`` is averaged over space: with the small head, which
    pools after the conv, the layer applied to these features gives the logits).
    """
    batches = []

    def keep(module: nn.Module, args: tuple) -> None:
        x = args[0].float()
        batches.append((x.mean(dim=(2, 3)) if x.ndim == 4 else x.flatten(1)).cpu())

    loader = BatchLoader(images, np.zeros(len(images), dtype=np.int64), batch_size, shuffle=False, device=device,
                         mean=mean, std=std, channels_last=channels_last)
    hook = final_layer(model).register_forward_pre_hook(keep)
    was_training = model.training
    model.eval()
    try:
        for x, _, _ in loader:
            model(x)
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(batches).numpy()


def tsne_perplexity(n: int, perplexity: float) -> float:
    """The perplexity t-SNE runs with on ``n`` images: ``min(perplexity, (n - 1) / 3)``.

    ValueError for fewer than ``MIN_IMAGES`` images or a perplexity that is not > 0.
    """
    if n < MIN_IMAGES:
        raise ValueError(f"t-SNE needs at least {MIN_IMAGES} images, got {n}")
    if not perplexity > 0:
        raise ValueError(f"perplexity = {perplexity}; must be > 0")
    return min(float(perplexity), (n - 1) / 3)


def tsne(features: np.ndarray, *, perplexity: float = 30.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """features ``[N, D]`` -> (float64 ``[N, 2]`` t-SNE coordinates, the perplexity used).

    scikit-learn's :class:`~sklearn.manifold.TSNE` with PCA initialisation and ``random_state=seed``
    (the same features, seed and thread count give the same map), at :func:`tsne_perplexity`.
    """
    used = tsne_perplexity(len(features), perplexity)
    coords = TSNE(n_components=2, init="pca", random_state=seed, perplexity=used).fit_transform(features)
    return coords.astype(np.float64), used


def default_member(run_dir: str | Path) -> str:
    """The member entry ranked first among the members of the run's ``leaderboard.csv`` (the best validation
    AUC; a repeated run's first repeat, :meth:`RunDir.ranked`).

    ValueError listing the run's members when there is no leaderboard or it ranks none of them.
    """
    run = RunDir(run_dir)
    members = _members(run)
    ranked = run.ranked("member")
    if not ranked:
        why = "ranks no member" if run.leaderboard_csv.is_file() else "is missing"
        raise ValueError(f"{run.leaderboard_csv} {why}: name the member with --member ID; members: "
                         f"{', '.join(members) or 'none (train the run first)'}")
    return ranked[0]


def embed_run(run_dir: str | Path, member: str, *, split: str | None = None, perplexity: float = 30.0, seed: int = 0,
              device: str = "auto", out: str | Path | None = None) -> Embedding:
    """t-SNE map of member entry ``member``'s penultimate features on ``split`` (see the module docstring).

    ``split``: "test" or "val"; default test when its table is fully labelled, else val. With unknown
    labels the points are coloured by predicted class (the title says so). Writes the PNG (to ``out``
    when given, else ``RUN_DIR/plots/embedding_<member>_<split>.png``) and
    ``RUN_DIR/embeddings/<member>_<split>.csv`` (``id, x, y, label, pred, prob``: class names, ``label``
    empty where unknown, ``prob`` the table's probability of ``pred``), both atomically.
    ValueError for an unknown member or split, naming what is allowed.
    """
    run = RunDir(run_dir)
    members = _members(run)
    if member not in members:
        raise ValueError(f"{run.path}: " + unknown_name("member", member, members, label="allowed"))
    if split is not None and split not in SPLITS:
        raise ValueError(unknown_name("split", split, SPLITS, label="allowed", sort=False))
    plan = member_plan(run, member)
    unit = plan.units[0]
    folds = plan.meta.get("folds")
    tables = {s: run.member(unit.unit).table(member, s) if folds else run.table("member", member, s) for s in SPLITS}
    if split is None:
        split = "test" if tables["test"].is_file() and ProbabilityTable.read(tables["test"]).has_labels else "val"
    if not tables[split].is_file():
        there = [s for s in SPLITS if tables[s].is_file()]
        raise FileNotFoundError(f"member {member!r} has no {split} table ({tables[split]}); splits with a table: "
                                f"{', '.join(there) or 'none'}")
    table = ProbabilityTable.read(tables[split])
    tsne_perplexity(len(table.ids), perplexity)
    images = run_images(run, table.ids).at(unit.size)
    dev = resolve_device(device)
    model, ckpt, channels_last = load_unit(unit, dev)
    features = penultimate_features(model, images, mean=ckpt["mean"], std=ckpt["std"], device=dev,
                                    batch_size=unit.batch_size, channels_last=channels_last)
    coords, used = tsne(features, perplexity=perplexity, seed=seed)
    preds = table.probs.argmax(axis=1)
    model_name = plan.meta.get("model")
    lines = [f"{member if model_name in (None, member) else f'{member} ({model_name})'}, {unit.size}px, on {split}: "
             + _counts(table.labels, preds)]
    if folds:
        lines.append(f"model of fold unit {unit.unit} (1 of {folds})" + (" on its held-out fold" if split == "val"
                                                                          else ""))
    lines.append(f"t-SNE of penultimate features (no TTA), perplexity {used:.3g}, seed {seed}")
    result = Embedding(member=member, unit=unit.unit, split=split, classes=table.classes, ids=table.ids,
                       features=features, coords=coords, labels=table.labels, preds=preds,
                       prob=table.probs[np.arange(len(preds)), preds], perplexity=used, seed=seed,
                       title="\n".join(lines),
                       png=Path(out) if out is not None else run.plots / f"embedding_{member}_{split}.png",
                       csv=run.path / "embeddings" / f"{member}_{split}.csv")
    _write_csv(result)
    plot_embedding(result)
    return result


def _counts(labels: np.ndarray, preds: np.ndarray) -> str:
    """The title's counts: images and misclassified ones, and how points are coloured when labels are unknown."""
    n, known = len(labels), int((labels >= 0).sum())
    wrong = int(((labels >= 0) & (preds != labels)).sum())
    if known == n:
        return f"{n} images, {wrong} misclassified (x)"
    if known:
        return (f"{n} images, {wrong} of {known} labelled misclassified (x)\n{n - known} labels unknown: coloured by "
                f"predicted class")
    return f"{n} images\nlabels unknown: coloured by predicted class"


def plot_embedding(e: Embedding) -> Path:
    """The map as a PNG at ``e.png`` (atomic): one colour per class (true, or predicted when labels are unknown),
    a black x over each misclassified image."""
    colour_by = e.labels if e.labelled else e.preds
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    for k, name in enumerate(e.classes):
        at = colour_by == k
        if at.any():
            ax.scatter(e.coords[at, 0], e.coords[at, 1], s=28, color=f"C{k % 10}", alpha=0.8, linewidths=0,
                       label=f"{name} ({int(at.sum())})")
    wrong = e.misclassified
    if wrong.any():
        ax.scatter(e.coords[wrong, 0], e.coords[wrong, 1], s=40, marker="x", color="black", linewidths=0.8,
                   label=f"misclassified ({int(wrong.sum())})")
    ax.set(xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.set_title(e.title, fontsize=9)
    ax.legend(title="true class" if e.labelled else "predicted class", fontsize=8, title_fontsize=8, loc="best")
    return save_png(fig, e.png, dpi=120)


def _write_csv(e: Embedding) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i, (x, y), label, pred, prob in zip(e.ids, e.coords, e.labels, e.preds, e.prob):
        w.writerow([i, repr(float(x)), repr(float(y)), e.classes[label] if label >= 0 else "", e.classes[pred],
                    repr(float(prob))])
    return write_text(e.csv, buf.getvalue())


def _members(run: RunDir) -> list[str]:
    """The run's member entries; FileNotFoundError when ``run`` is not a folder."""
    if not run.path.is_dir():
        raise FileNotFoundError(f"no run folder at {run.path}")
    return [e for e, kind in run_entries(run).items() if kind == "member"]
