"""Heatmaps of what a run's entry looks at: a member's, or an ensemble's weighted combination of its members'.

Methods (:data:`METHODS`, the ``explain`` extra: ``pip install 'medzoo[explain]'``): the CAM family from
grad-cam (``gradcam``, the default, ``gradcam++``, ``eigencam``), read at a target layer, and from captum
``integrated_gradients`` (from a black image) and ``occlusion`` (a black square slid over the image),
whose attributions are summed over the colour channels, taken in magnitude and scaled to [0, 1] per
image. Every map of one image is ``[S, S]`` in [0, 1] at the model's input size ``S``.

Target layer (:data:`TARGET_LAYERS`, candidate blocks per model family, deepest first): the deepest block
whose map is still at least ``MIN_MAP`` (4) pixels square at the model's input size, so that a model trained
on small images (ResNet at 32 px ends in a 1x1 ``layer4``) still gets a map with some resolution: at 224 px
the last block, ResNet's ``layer4``, DenseNet's ``features``, VGG's last ReLU (before its last max pool),
Inception's ``Mixed_7c``, SqueezeNet's ``features`` (its last Fire module; the head is a 1x1 conv and a
global pool, and the model's output is ``[N, C]`` logits); at 32 px ResNet's ``layer2``. ``layer`` names
another module by its path in the model (``layer3``, ``features.denseblock3``), or ``"aux"``:
Inception's auxiliary head, explained from its input ``Mixed_6e``. Inception is explained in eval
mode, where torchvision returns plain logits and the auxiliary head does not run: the default
explains the main head, ``"aux"`` the auxiliary one (its logits computed from the ``Mixed_6e`` map
of the same forward pass). A layer whose map is 1x1 gives a flat map (a warning says so).

Target class: ``target`` (a class name), else the second class of a two-class task (the positive
class, the one the leaderboard's binary AUC scores), else each image's predicted class.

A member entry's map is that of its kept checkpoint, the one its tables were predicted with (a
snapshot member's ``snap<j>.pt``); a cross-validated member's is the mean of its K fold models' maps.
Maps are made without TTA: a flipped view's map would have to be flipped back, and it explains the
same model. An ensemble entry's map is ``sum_m w_m map_m / sum_m w_m`` over its members, each
member's map resized to the display size first (:func:`combine_maps`), with the member weights of
the method restored from its saved state (``RunDir.ensemble_state``; per-class weights are taken at
the target class); members of weight 0 are skipped. A method without member weights (median,
geometric and rank means, votes, stacking) gets the plain mean of its members' maps (of the members
it selected, for ``subset_search``): it is not linear in the members' outputs, and an equal-weight mean
is the honest summary.

Images: by default the most confident true positives, false positives and false negatives
(:func:`pick_images`) of the entry's own test table, or of its validation table when the test split
has no labels (a challenge's withheld test set; under ``[cv]`` val is out-of-fold, the maps those of
the fold models' mean); or the ``images`` given, read as ``medzoo predict`` reads them
(:func:`medzoo.zoo.apply.read_images`), with the entry's probabilities from
:func:`medzoo.zoo.apply.predict_run`.

Outputs, under ``RUN_DIR/explain/<entry>/`` unless ``out`` is given, written atomically: ``<id>.png``
per image (the heatmap, jet, alpha-blended on the image; title: true class, predicted class and
probability), ``grid.png`` (a row per group TP / FP / FN, a column per image), ``picks.csv``
(``image_id,group,label,predicted,target,prob``) and, for an ensemble, ``members.png`` (a row per
image: the image, each member's map with its weight, and the ensemble's).
"""
from __future__ import annotations

import csv
import importlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from medzoo.core.figures import save_png
from medzoo.core.fileio import write_text
from medzoo.core.names import unknown_name
from medzoo.core.registry import Registry
from medzoo.core.rundir import RunDir
from medzoo.ensemble.calibration import calibration_source
from medzoo.ensemble.combiners import Combiner
from medzoo.ensemble.table import ProbabilityTable
from medzoo.zoo.apply import (Images, MemberPlan, UnitModel, member_plan, open_entry, plan_classes, predict_run,
                              read_images, records_images, restored_method, run_images)
from medzoo.zoo.checkpoint import load_checkpoint, model_for_checkpoint, model_from_checkpoint
from medzoo.zoo.device import resolve_device
from medzoo.zoo.models import forward_logits, model_info

INSTALL_HINT = "pip install 'medzoo[explain]'"
AUX = "aux"
GROUPS = ("TP", "FP", "FN")
IMAGES_GROUP = "images"
THRESHOLD = 0.5
BATCH = 16
IG_STEPS = 32
ALPHA = 0.4
GRID_COLUMNS = 8
PICKS_COLUMNS = ("image_id", "group", "label", "predicted", "target", "prob")

MIN_MAP = 4  # the default CAM layer is the deepest candidate whose map is at least MIN_MAP x MIN_MAP
TARGET_LAYERS: dict[str, Callable[[nn.Module], list[nn.Module]]] = {  # candidate blocks, deepest first
    "resnet": lambda m: [m.layer4, m.layer3, m.layer2, m.layer1],
    "densenet": lambda m: [m.features, m.features.denseblock3, m.features.denseblock2, m.features.denseblock1],
    "vgg": lambda m: [x for x, after in zip(m.features, [*m.features][1:]) if isinstance(x, nn.ReLU)
                      and isinstance(after, nn.MaxPool2d)][::-1],
    "inception": lambda m: [m.Mixed_7c, m.Mixed_6e, m.Mixed_5d],
    "squeezenet": lambda m: [m.features, m.features[7], m.features[4]],
}

METHODS = Registry("explain method")


@dataclass(frozen=True)
class Pick:
    """One image explained: its ``group`` (TP, FP, FN or "images"), true ``label`` ("" unknown), ``predicted``
    class, ``target`` class (the one explained) and ``prob`` (of the target class)."""

    image_id: str
    group: str
    label: str
    predicted: str
    target: str
    prob: float


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain_run` made. ``maps`` float64 ``[N, D, D]`` in [0, 1] (the entry's, one per pick, at
    display size ``D``); ``member_maps`` ``{member: [N, D, D]}`` (the entry itself for a member);
    ``weights`` ``{member: weight}`` at each image's target class, ``[N]``; ``split`` the table the picks
    came from (None for given images); ``note`` says when test had no labels and val was used."""

    entry: str
    kind: str
    method: str
    split: str | None
    picks: list[Pick]
    maps: np.ndarray
    member_maps: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    folder: Path
    overlays: list[Path]
    grid: Path
    picks_csv: Path
    members_png: Path | None
    note: str | None


class LogitsModel(nn.Module):
    """A member's model as the explainers see it: pixels ``[B, 3, S, S]`` in [0, 1] -> logits ``[B, C]``.

    It normalises with the checkpoint's mean/std, as the data loader does, so that captum's black
    baseline is 0. ``aux``: the logits of Inception's auxiliary head, computed from the ``Mixed_6e``
    map of the eval forward pass.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], aux: bool = False):
        super().__init__()
        self.model, self.aux = model, aux
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if not self.aux:
            return forward_logits(self.model, x)[0]
        seen = []
        hook = self.model.Mixed_6e.register_forward_hook(lambda module, inputs, output: seen.append(output))
        try:
            self.model(x)
        finally:
            hook.remove()
        return self.model.AuxLogits(seen[0])


def require_method(method: str):
    """The library module explain method ``method`` runs on; ValueError listing the methods for an unknown one,
    ImportError naming the package and the extra when it is not installed."""
    entry = METHODS[method]
    try:
        return importlib.import_module(entry.get("module"))
    except ImportError as e:
        raise ImportError(f"explain method {method!r} needs the {entry.get('package')} package, which is not "
                          f"installed ({e}); install the explain extra: {INSTALL_HINT}") from e


def _cam_method(class_name: str) -> Callable:
    def run(lib, model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        cam = getattr(lib, class_name)(model=model, target_layers=[layer])
        try:
            wanted = [lib.utils.model_targets.ClassifierOutputTarget(int(t)) for t in targets]
            return cam(input_tensor=x, targets=wanted)
        finally:
            cam.activations_and_grads.release()

    return run


for _name, _class, _text in (("gradcam", "GradCAM", "Grad-CAM: the target layer's map weighted by its mean gradient"),
                             ("gradcam++", "GradCAMPlusPlus", "Grad-CAM++: weights from second-order gradients"),
                             ("eigencam", "EigenCAM", "Eigen-CAM: the first principal component of the target "
                                                      "layer's map (class-agnostic)")):
    METHODS.register(_name, description=_text, module="pytorch_grad_cam", package="grad-cam", layer=True)(
        _cam_method(_class))


def _magnitude(attribution: torch.Tensor) -> np.ndarray:
    """Attributions ``[B, 3, S, S]`` -> ``|sum over channels|`` scaled to [0, 1] per image, ``[B, S, S]``."""
    a = attribution.detach().sum(dim=1).abs().double().cpu().numpy()
    low = a.min(axis=(1, 2), keepdims=True)
    span = a.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (a - low) / np.where(span > 0, span, 1.0), 0.0)


@METHODS.register("integrated_gradients", module="captum.attr", package="captum", layer=False)
def integrated_gradients(lib, model: nn.Module, layer, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Integrated gradients from a black image (captum), in magnitude."""
    attr = lib.IntegratedGradients(model).attribute(x, baselines=0.0, target=targets, n_steps=IG_STEPS,
                                                    internal_batch_size=BATCH)
    return _magnitude(attr)


@METHODS.register("occlusion", module="captum.attr", package="captum", layer=False)
def occlusion(lib, model: nn.Module, layer, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Occlusion (captum): the score change when a black square of 1/8 of the image covers each place, in
    magnitude."""
    side = max(2, x.shape[-1] // 8)
    step = max(1, side // 2)
    attr = lib.Occlusion(model).attribute(x, sliding_window_shapes=(3, side, side), strides=(3, step, step),
                                          baselines=0.0, target=targets, perturbations_per_eval=BATCH)
    return _magnitude(attr)


def target_layer(model: nn.Module, family: str, layer: str | None = None, size: int | None = None) -> nn.Module:
    """The module a CAM method reads: the module at path ``layer``, Inception's ``Mixed_6e`` for ``"aux"``, or by
    default the deepest of the family's blocks (:data:`TARGET_LAYERS`) whose map is at least ``MIN_MAP`` pixels
    square at input ``size`` (found by one forward pass of a black image; the last block when no size is given,
    the shallowest when none is that large). Raises naming the top-level modules for an unknown path."""
    if layer == AUX:
        return model.Mixed_6e
    if layer is not None:
        try:
            return model.get_submodule(layer)
        except AttributeError:
            top = ", ".join(name for name, _ in model.named_children())
            raise ValueError(f"no module {layer!r} in this {family} model; give a module path (its top-level modules: "
                             f"{top}), {AUX!r} for Inception's auxiliary head, or no layer for the family's last "
                             f"convolutional block that keeps a {MIN_MAP}x{MIN_MAP} map") from None
    candidates = TARGET_LAYERS[family](model)
    if size is None:
        return candidates[0]
    sides: dict[int, int] = {}

    def record(k: int):
        def hook(module, inputs, output) -> None:
            sides.setdefault(k, min(output.shape[-2:]))
        return hook

    hooks = [c.register_forward_hook(record(k)) for k, c in enumerate(candidates)]
    try:
        with torch.no_grad():
            forward_logits(model.eval(), torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return next((c for k, c in enumerate(candidates) if sides[k] >= MIN_MAP), candidates[-1])


def check_layer(method: str, layer: str | None) -> None:
    """Raise when ``layer`` names a module for a method that reads none (captum's attribute the input pixels)."""
    if layer not in (None, AUX) and not METHODS[method].get("layer"):
        raise ValueError(f"{method} attributes the input pixels and reads no layer; layer {layer!r} is for the "
                         f"CAM methods: {', '.join(METHODS.names(layer=True))}")


def _layer_family(arch: str, layer: str | None) -> str:
    """The family of ``arch``; raises when ``layer`` is ``"aux"`` and the family is not Inception."""
    family = model_info(arch).family
    if layer == AUX and family != "inception":
        raise ValueError(f"layer {AUX!r} is Inception's auxiliary head; {arch} is a {family} model")
    return family


def check_entry_layer(plans: Sequence[MemberPlan], layer: str | None) -> None:
    """Raise, before any model runs, when ``layer`` does not fit every model of ``plans``: ``"aux"`` for a family
    other than Inception, or a module path that one of them lacks (checked on an empty model on the meta device);
    the message names the member."""
    if layer is None:
        return
    seen = set()
    for plan in plans:
        for u in plan.units:
            ckpt = load_checkpoint(u.checkpoint)
            key = (ckpt["arch"], ckpt.get("head"), len(ckpt["classes"]))
            if key in seen:
                continue
            seen.add(key)
            try:
                family = _layer_family(ckpt["arch"], layer)
                with torch.device("meta"):
                    target_layer(model_for_checkpoint(ckpt), family, layer)
            except ValueError as e:
                raise ValueError(f"member {plan.entry!r}: {e}") from None


def unit_maps(model: nn.Module, ckpt: dict, images: np.ndarray, targets: np.ndarray, method: str,
              layer: str | None = None, device: torch.device | str = "cpu") -> np.ndarray:
    """Maps float64 ``[N, S, S]`` in [0, 1] of one model for ``images`` uint8 ``[N, S, S, 3]`` (at its input
    size) and class indices ``targets`` ``[N]``; ``ckpt`` is its checkpoint (arch, mean, std).

    ``layer``: see :func:`target_layer`; ``"aux"`` (Inception only) explains the auxiliary head.
    """
    lib = require_method(method)
    check_layer(method, layer)
    entry = METHODS[method]
    family = _layer_family(ckpt["arch"], layer)
    device = torch.device(device)
    model = model.to(device).eval()
    wrapped = LogitsModel(model, ckpt["mean"], ckpt["std"], aux=layer == AUX).to(device).eval()
    module = target_layer(model, family, layer, size=images.shape[1]) if entry.get("layer") else None
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    out, shapes = [], []
    hook = module.register_forward_hook(lambda m, i, o: shapes.append(o.shape[-2:])) if module is not None else None
    try:
        for start in range(0, len(images), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + BATCH])).to(device)
            x = (x.permute(0, 3, 1, 2).float() / 255.0).requires_grad_(True)
            t = torch.as_tensor(targets[start:start + BATCH], dtype=torch.long, device=device)
            out.append(np.asarray(entry.target(lib, wrapped, module, x, t), dtype=np.float64))
    finally:
        if hook is not None:
            hook.remove()
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
    if shapes and tuple(shapes[0]) == (1, 1):
        warnings.warn(f"{ckpt['arch']}: {method} reads a 1x1 map at {images.shape[1]} px "
                      f"({f'layer {layer!r}' if layer else 'its target layer'}), so every map is flat; explain an "
                      f"earlier layer (layer=...), or train at a larger size", stacklevel=2)
    return np.clip(np.concatenate(out), 0.0, 1.0) if out else np.zeros((0,) + images.shape[1:3])


def resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """Maps ``[N, S, S]`` -> float64 ``[N, size, size]`` (bilinear), still in [0, 1]."""
    if maps.shape[1:] == (size, size):
        return maps.astype(np.float64)
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float64))[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()


def combine_maps(maps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of member maps ``[M, N, D, D]`` with weights ``[M]`` or ``[M, N]`` (per image):
    ``sum_m w_m map_m / sum_m w_m`` -> ``[N, D, D]``. Raises when an image's weights sum to 0."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = np.repeat(w[:, None], maps.shape[1], axis=1)
    total = w.sum(axis=0)
    if (total <= 0).any():
        raise ValueError(f"the member weights of {int((total <= 0).sum())} image(s) sum to {total.min():g}; "
                         f"a weighted map needs a positive total")
    return np.einsum("mn,mnhw->nhw", w, maps) / total[:, None, None]


def member_weights(method: Combiner) -> dict[str, np.ndarray]:
    """``{member: weights [C]}`` of a restored ensemble method, members of weight 0 left out.

    The method's own member weights (``weights_``; a scalar per member stands for every class),
    else equal weights over its members (those it selected, ``info_["selected"]``, for a subset search).
    """
    c = len(method.classes_)
    if method.weights_ is None:
        chosen = method.info_.get("selected", method.members_)
        return {m: np.ones(c) for m in chosen}
    out = {m: np.broadcast_to(np.asarray(w, dtype=np.float64), (c,)).copy() for m, w in method.weights_.items()}
    return {m: w for m, w in out.items() if (w != 0).any()}


def resolve_target(target: str | None, classes: Sequence[str]) -> int | None:
    """Index of the class explained: ``target`` by name, else 1 for two classes, else None (each image's
    predicted class)."""
    if target is not None:
        if target not in classes:
            raise ValueError(unknown_name("class", target, classes, label="classes", sort=False))
        return list(classes).index(target)
    return 1 if len(classes) == 2 else None


def pick_images(table: ProbabilityTable, target: int | None, per_group: int = 4) -> list[Pick]:
    """The ``per_group`` most confident true positives, false positives and false negatives of a labelled table.

    With a target class ``t`` an image is called ``t`` when ``p_t >= 0.5`` (two classes) or when ``t`` is its
    argmax (more): TP are the images of class ``t`` so called, highest ``p_t`` first; FP the others so called,
    highest ``p_t`` first; FN the images of class ``t`` not so called, lowest ``p_t`` first. Without one (several
    classes): TP the correct argmax calls, FP the wrong ones, both by the predicted class's probability,
    highest first, and FN the other wrong ones, lowest probability of the true class first. Ties go to the
    smaller id. Rows without a label are left out.
    """
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    probs, labels = table.probs, table.labels
    ids = np.array(table.ids, dtype=str)
    known = labels >= 0
    predicted = probs.argmax(axis=1)
    rows = np.arange(len(ids))
    if target is not None:
        score = probs[:, target]
        called = score >= THRESHOLD if probs.shape[1] == 2 else predicted == target
        truth = labels == target
        groups = {"TP": (known & truth & called, -score), "FP": (known & ~truth & called, -score),
                  "FN": (known & truth & ~called, score)}
        shown = np.full(len(ids), target)
    else:
        conf = probs[rows, predicted]
        right, wrong = known & (predicted == labels), known & (predicted != labels)
        groups = {"TP": (right, -conf), "FP": (wrong, -conf), "FN": (wrong, probs[rows, np.maximum(labels, 0)])}
        shown = predicted
    out, taken = [], set()
    for group in GROUPS:
        mask, key = groups[group]
        chosen = [i for i in rows[np.lexsort((ids, key))] if mask[i] and i not in taken][:per_group]
        taken.update(chosen)
        out += [Pick(str(ids[i]), group, table.classes[labels[i]], table.classes[predicted[i]],
                     table.classes[shown[i]], float(probs[i, shown[i]])) for i in chosen]
    return out


def _given_picks(table: ProbabilityTable, target: int | None) -> list[Pick]:
    """Every row of a table of given images, in order (group "images")."""
    predicted = table.probs.argmax(axis=1)
    shown = predicted if target is None else np.full(len(table.ids), target)
    return [Pick(i, IMAGES_GROUP, table.classes[y] if y >= 0 else "", table.classes[p], table.classes[t],
                 float(row[t])) for i, y, p, t, row in zip(table.ids, table.labels, predicted, shown, table.probs)]


def _entry_table(run: RunDir, kind: str, entry: str) -> tuple[ProbabilityTable, str, str | None]:
    """``(table, split, note)``: the entry's labelled test table, else its val table with a note saying so."""
    test = run.table(kind, entry, "test")
    if test.is_file():
        table = ProbabilityTable.read(test)
        if table.has_labels:
            return table, "test", None
    why = "has no labels" if test.is_file() else "has no table"
    val = run.table(kind, entry, "val")
    if not val.is_file():
        raise FileNotFoundError(f"{entry!r}: no labelled table to pick images from ({test} {why}, and no {val}); "
                                f"give the images to explain")
    return ProbabilityTable.read(val), "val", f"the test split {why}: images picked from val"


def _member_map(plan: MemberPlan, images: Images, targets: np.ndarray, method: str, layer: str | None,
                size: int, device: torch.device, bar) -> np.ndarray:
    """One member's maps ``[N, size, size]``: the mean of its units' maps, each resized to ``size``."""
    maps = []
    for u in plan.units:
        maps.append(resize_maps(_unit_map(u, images, targets, method, layer, device), size))
        bar.update(1)
    return np.mean(maps, axis=0)


def _unit_map(u: UnitModel, images: Images, targets: np.ndarray, method: str, layer: str | None,
              device: torch.device) -> np.ndarray:
    model, ckpt = model_from_checkpoint(u.checkpoint, device)
    return unit_maps(model, ckpt, images.at(u.size), targets, method, layer, device)


def explain_run(run_dir: str | Path, entry: str, *, images: str | Path | Sequence[str | Path] | None = None,
                method: str = "gradcam", target: str | None = None, layer: str | None = None, per_group: int = 4,
                size: int | None = None, device: str = "auto", out: str | Path | None = None,
                progress: bool = False) -> Explanation:
    """Heatmaps of run entry ``entry`` (a member, an ensemble, or a ``+ts`` copy of one: its source's maps) and the
    figures of them (see the module docstring).

    ``images``: what to explain (files, folders, a CSV of paths or an ``.npz``, as ``medzoo predict``); default:
    the ``per_group`` most confident TP / FP / FN on test (:func:`pick_images`). ``method``: a name of
    :data:`METHODS`. ``target``: the class explained (see :func:`resolve_target`). ``layer``: see
    :func:`target_layer`. ``size``: the display size ``D`` (default: the largest input size of the entry's
    models). Writes to ``out`` (default ``RUN_DIR/explain/<entry>/``). Unknown entries, methods and
    classes raise listing the allowed ones; a missing library raises ImportError naming the extra.
    """
    run, kind = open_entry(run_dir, entry)
    require_method(method)
    check_layer(method, layer)
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    calibrated = calibration_source(run.path, entry)  # a temperature-scaled entry's maps are its source's
    model_kind, model_entry = calibrated[:2] if calibrated is not None else (kind, entry)
    weights = member_weights(restored_method(run, model_entry)) if model_kind == "ensemble" else None
    plans = [member_plan(run, m) for m in (weights if weights is not None else [model_entry])]
    check_entry_layer(plans, layer)
    target_index = resolve_target(target, plan_classes(plans))
    if images is not None:
        inputs = [images] if isinstance(images, (str, Path)) else list(images)
        pixels = records_images(read_images(inputs))
        table = predict_run(run.path, inputs, entry=entry, device=device, progress=progress)
        picks, split, note = _given_picks(table, target_index), None, None
    else:
        full, split, note = _entry_table(run, kind, entry)
        picks = pick_images(full, target_index, per_group)
        if not picks:
            raise ValueError(f"{entry!r}: its {split} table has no true positive, false positive or false negative to "
                             f"explain; give the images to explain")
        table = full.select([p.image_id for p in picks])
        pixels = run_images(run, table.ids)
    classes = table.classes
    targets = np.array([classes.index(p.target) for p in picks], dtype=np.int64)
    size = size or max(u.size for p in plans for u in p.units)
    dev = resolve_device(device)
    with tqdm(total=sum(len(p.units) for p in plans), desc=f"explain {entry}", unit="model",
              disable=None if progress else True) as bar:
        member_maps = {p.entry: _member_map(p, pixels, targets, method, layer, size, dev, bar) for p in plans}
    w = {m: (weights[m][targets] if weights is not None else np.ones(len(picks))) for m in member_maps}
    maps = combine_maps(np.stack(list(member_maps.values())), np.stack(list(w.values())))
    folder = Path(out) if out is not None else run.explain / entry
    display = pixels.at(size)
    explained = "predicted class" if target_index is None else classes[target_index]
    title = f"{entry}: {method}{f' at {layer}' if layer else ''} of {explained}, {split or 'given images'}"
    _remove_stale(folder, picks)
    overlays = [write_overlay(folder / f"{_file_name(p.image_id)}.png", display[k], maps[k], _caption(p))
                for k, p in enumerate(picks)]
    grid = write_grid(folder / "grid.png", display, maps, picks, title)
    members_png = (write_members(folder / "members.png", display, maps, member_maps, w, picks, title)
                   if model_kind == "ensemble" else None)
    picks_csv = write_picks(folder / "picks.csv", picks)
    return Explanation(entry, model_kind, method, split, picks, maps, member_maps, w, folder, overlays, grid,
                       picks_csv, members_png, note)


def _remove_stale(folder: Path, picks: list[Pick]) -> None:
    """Remove the overlays of images a previous explanation in ``folder`` picked (its ``picks.csv``) and this one
    does not; nothing else in the folder is touched."""
    previous = folder / "picks.csv"
    if not previous.is_file():
        return
    with open(previous, newline="") as f:
        old = {row["image_id"] for row in csv.DictReader(f) if row.get("image_id")}
    for image_id in old - {p.image_id for p in picks}:
        (folder / f"{_file_name(image_id)}.png").unlink(missing_ok=True)


def _file_name(image_id: str) -> str:
    """An image id as a file name: characters other than letters, digits, ``._-@`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._@-]", "_", image_id) or "_"


def _caption(p: Pick) -> str:
    return f"{p.image_id}\ntrue {p.label or '?'}, pred {p.predicted}, p({p.target}) {p.prob:.3f}"


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Image uint8 ``[D, D, 3]`` with map ``[D, D]`` in [0, 1] blended over it (jet) -> uint8 ``[D, D, 3]``."""
    colour = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    mixed = (1 - alpha) * image.astype(np.float64) / 255.0 + alpha * colour
    return np.round(np.clip(mixed, 0, 1) * 255).astype(np.uint8)


def write_overlay(path: Path, image: np.ndarray, heat: np.ndarray, caption: str) -> Path:
    """One image's overlay with its caption as the title."""
    fig = Figure(figsize=(3.2, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.imshow(overlay(image, heat))
    ax.set_title(caption, fontsize=8)
    ax.axis("off")
    return save_png(fig, path)


def write_grid(path: Path, images: np.ndarray, maps: np.ndarray, picks: list[Pick], title: str) -> Path:
    """A row per group (TP, FP, FN; or the given images, :data:`GRID_COLUMNS` a row), a column per image."""
    order = GROUPS if any(p.group in GROUPS for p in picks) else (IMAGES_GROUP,)
    rows = []
    for group in order:
        members = [k for k, p in enumerate(picks) if p.group == group]
        width = GRID_COLUMNS if group == IMAGES_GROUP else max(1, len(members))
        rows += [(group, members[i:i + width]) for i in range(0, max(1, len(members)), width)]
    cols = max(1, max(len(r) for _, r in rows))
    fig = Figure(figsize=(2.2 * cols, 2.5 * len(rows)), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for r, (group, members) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(members):
                k = members[c]
                ax.imshow(overlay(images[k], maps[k]))
                ax.set_title(f"{picks[k].image_id}\np({picks[k].target}) {picks[k].prob:.3f}", fontsize=7)
            else:
                ax.axis("off")
                if not members and c == 0:
                    ax.text(0.5, 0.5, f"no {group}", ha="center", va="center", transform=ax.transAxes)
            if c == 0 and members:
                ax.set_ylabel(group, fontsize=11)
    fig.suptitle(title)
    return save_png(fig, path)


def write_members(path: Path, images: np.ndarray, maps: np.ndarray, member_maps: dict[str, np.ndarray],
                  weights: dict[str, np.ndarray], picks: list[Pick], title: str) -> Path:
    """An ensemble's strip: a row per image with the image, each member's map (its weight) and the ensemble's."""
    names = list(member_maps)
    cols = len(names) + 2
    fig = Figure(figsize=(1.8 * cols, 2.0 * max(1, len(picks))), layout="constrained")
    axes = np.asarray(fig.subplots(max(1, len(picks)), cols, squeeze=False))
    for k, p in enumerate(picks):
        shown = [(p.image_id, images[k])] + [(f"{m}\nw {weights[m][k]:.3g}", overlay(images[k], member_maps[m][k]))
                                             for m in names] + [("ensemble", overlay(images[k], maps[k]))]
        for ax, (text, img) in zip(axes[k], shown):
            ax.imshow(img)
            ax.set_title(text, fontsize=7)
            ax.axis("off")
    fig.suptitle(title)
    return save_png(fig, path)


def write_picks(path: Path, picks: list[Pick]) -> Path:
    """``picks.csv``: :data:`PICKS_COLUMNS`, one row per image, in pick order."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PICKS_COLUMNS)
    w.writerows([p.image_id, p.group, p.label, p.predicted, p.target, f"{p.prob:.6f}"] for p in picks)
    return write_text(path, buf.getvalue())
