"""Zoo configs: a TOML file parsed into validated, frozen dataclasses.

Layout (see ``benchmarks/quick_pneumoniamnist.toml``)::

    run = "pneumoniamnist"        # outputs go to results/<run>/
    dataset = "pneumoniamnist"    # card name or path
    seed = 0
    device = "auto"               # auto | cpu | cuda | cuda:N
    [train]                       # defaults for every member
    epochs = 10
    [train.augment]
    hflip = true
    [[members]]
    model = "resnet18"
    size = 64                     # default: the model's default input size
    id = "resnet18"               # default: the model name
    lr = 3e-4                     # any [train] key may be overridden per member
    seeds = [0, 1, 2]             # repeats (default: the top-level seeds, else [seed])
    [cv]
    folds = 5                     # K-fold cross-validation of every member over train+val

Each member trains as one or more *units* (:meth:`ZooConfig.units`): one per seed and, under
``[cv]``, per fold. A zoo is *repeated* when a member has several seeds; repeat tags are
``@s<seed>``, and a member with one seed is shared by every repeat. ``snapshots = M`` in
``[train]`` turns one training run into M members (a cyclic cosine schedule, one snapshot at
the end of each cycle). ``average = "ema"`` keeps (and validates) an exponential moving average
of the weights (``ema_decay`` per optimizer step), ``average = "swa"`` the mean of the weights
at the end of every epoch from ``swa_start`` (a fraction of the epochs) on, with its batch-norm
statistics recomputed (``torch.optim.swa_utils``). ``mixup = alpha`` and ``cutmix = alpha`` mix each
training batch with a permutation of itself (Beta(alpha, alpha) weights; both: one of the two per
batch, :func:`medzoo.zoo.augment.mix_batch`). ``tensorboard = true`` (the ``medzoo[tensorboard]``
extra) also logs each unit's per-epoch history to ``members/<unit>/tensorboard/``
(:mod:`medzoo.zoo.tblog`). Names: a unit's folder is ``<id>[@s<seed>][@f<k>]`` (k from 1), the
member tables it feeds are ``<id>[.snap<j>][@s<seed>]``; ``@`` is reserved for these tags.

``[ensemble]``, ``[leaderboard]`` and ``[submission]`` are kept as plain
dicts for the layers that read them. ``dist_timeout`` (seconds a distributed collective
may wait for a peer) and ``claim_timeout`` (seconds without a heartbeat after which another
job may take over a member) are top-level keys.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medzoo.core.names import unknown_name
from medzoo.core.rundir import TAG
from medzoo.zoo.tblog import INSTALL_HINT, tensorboard_installed
from medzoo.zoo.tomlfile import merge_tables

CHOICES = {
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("cosine", "plateau", "none"),
    "loss": ("ce", "weighted_ce", "focal"),
    "average": ("none", "ema", "swa"),
}
SECTIONS = ("ensemble", "leaderboard", "submission")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation, applied by ``zoo.loader.BatchLoader`` on the device."""

    hflip: bool = False
    vflip: bool = False
    rotate: float = 0.0
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    def as_loader_dict(self) -> dict | None:
        """The loader's ``augment`` argument: ``None`` when nothing is switched on."""
        d = asdict(self)
        return d if any(d.values()) else None


@dataclass(frozen=True)
class TrainConfig:
    """Training options for one member (``[train]`` merged with the member's overrides)."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 1
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    label_smoothing: float = 0.0
    loss: str = "ce"
    focal_gamma: float = 2.0
    patience: int = 5
    pretrained: bool | str = False
    freeze_backbone: bool = False
    unfreeze_after: int = 0
    tta: bool = False
    amp: bool | str = "auto"
    channels_last: bool | str = "auto"
    accumulate: int = 1
    effective_batch: int = 0
    sync_bn: bool = False
    max_train_batches: int = 0
    snapshots: int = 1
    average: str = "none"
    ema_decay: float = 0.999
    swa_start: float = 0.75
    mixup: float = 0.0
    cutmix: float = 0.0
    tensorboard: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class MemberConfig:
    """One zoo member: a model at an input size with its training options."""

    id: str
    model: str
    size: int
    train: TrainConfig
    seeds: tuple[int, ...] = (0,)

    @property
    def entries(self) -> tuple[str, ...]:
        """The member-table names of one of its runs, before the repeat tag: ``<id>`` or ``<id>.snap<j>``."""
        m = self.train.snapshots
        return (self.id,) if m == 1 else tuple(f"{self.id}.snap{j}" for j in range(1, m + 1))


@dataclass(frozen=True)
class CVConfig:
    """``[cv]``: K-fold cross-validation of every member over train+val (``folds = 0``: off).

    ``seed`` fixes the stratified (and, when the dataset names groups, grouped) fold assignment,
    shared by every member and repeat.
    """

    folds: int = 0
    seed: int = 0


@dataclass(frozen=True)
class Unit:
    """One training run: a member at one seed and, under ``[cv]``, one fold (1-based; None without cv).

    ``name`` is its folder under ``members/``; ``tag`` its repeat (``"s1"``, None when the member is
    not repeated); ``entries`` the member tables its run feeds (a fold unit feeds them through the
    cross-validation assembly, :mod:`medzoo.zoo.crossval`).
    """

    name: str
    member: MemberConfig
    seed: int
    tag: str | None
    fold: int | None
    entries: tuple[str, ...]


@dataclass(frozen=True)
class ZooConfig:
    """A whole zoo run. ``train`` holds the defaults; each member carries its merged options."""

    run: str
    dataset: str
    members: tuple[MemberConfig, ...]
    seed: int = 0
    seeds: tuple[int, ...] = ()
    device: str = "auto"
    data_root: str | None = None
    dist_timeout: float = 1800.0
    claim_timeout: float = 600.0
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    ensemble: dict = field(default_factory=dict)
    leaderboard: dict = field(default_factory=dict)
    submission: dict = field(default_factory=dict)
    source: str | None = None

    def member(self, member_id: str) -> MemberConfig:
        """The member with this id; unknown ids raise naming the closest and all ids."""
        ids = [m.id for m in self.members]
        if member_id not in ids:
            raise ValueError(unknown_name("member", member_id, ids, label="allowed", sort=False))
        return self.members[ids.index(member_id)]

    @property
    def repeats(self) -> tuple[int, ...]:
        """The seeds of the repeated members (every repeated member has the same list); () when not repeated."""
        return next((m.seeds for m in self.members if len(m.seeds) > 1), ())

    def units(self, member_ids=None) -> list[Unit]:
        """The training runs of the members named (default: all): repeat by repeat, then member, then fold."""
        chosen = [self.member(m) for m in member_ids] if member_ids else list(self.members)
        out = []
        for name, i, seed, tag, fold in unit_names([(m.id, m.seeds) for m in chosen], self.cv.folds):
            m = chosen[i]
            entries = tuple(e + (f"{TAG}{tag}" if tag else "") for e in m.entries)
            out.append(Unit(name, m, seed, tag, fold, entries))
        return out

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the resolved config (what a run folder records, ``RunDir.write_config``)."""
        return asdict(self)


def unit_names(members: list[tuple[str, tuple[int, ...]]], folds: int) -> list[tuple[str, int, int, str | None,
                                                                                   int | None]]:
    """``(name, member index, seed, tag, fold)`` of every unit of ``members`` (``(id, seeds)``) under ``folds``
    (0: no cv), repeat by repeat, then member, then fold; what :meth:`ZooConfig.units` and a recorded
    config's reader (``schedule.status``) share."""
    out = []
    for r in range(max(len(seeds) for _, seeds in members)):
        for i, (member_id, seeds) in enumerate(members):
            if r < len(seeds):
                tag = f"s{seeds[r]}" if len(seeds) > 1 else None
                base = member_id + (f"{TAG}{tag}" if tag else "")
                out += [(base + (f"{TAG}f{k}" if k else ""), i, seeds[r], tag, k)
                        for k in (range(1, folds + 1) if folds else [None])]
    return out


def parse_config(raw: dict, overrides: dict | None = None, source: str | None = None) -> ZooConfig:
    """Validate a config dict (the parsed TOML) into a :class:`ZooConfig`."""
    raw = merge_tables(raw, overrides or {})
    forced = dict((overrides or {}).get("train", {}))
    top = {f.name for f in fields(ZooConfig)} - {"members", "train", "source", "cv"}
    _check_keys(raw, top | {"members", "train", "cv"}, "the config")
    for key in ("run", "dataset"):
        if key not in raw:
            raise ValueError(f"the config lacks required key {key!r} (e.g. {key} = \"pneumoniamnist\")")
    kwargs = {k: raw[k] for k in top if k in raw}
    for k in ("run", "dataset", "device", "data_root"):
        if k in kwargs and not isinstance(kwargs[k], str):
            raise ValueError(f"{k} = {kwargs[k]!r}; expected a string")
    _check_type("seed", kwargs.get("seed", 0), int)
    if "seeds" in kwargs:
        kwargs["seeds"] = _parse_seeds(kwargs["seeds"], "seeds")
    kwargs["cv"] = _parse_cv(raw.get("cv", {}))
    _check_device(kwargs.get("device", "auto"))
    for k in ("dist_timeout", "claim_timeout"):
        if k in kwargs:
            kwargs[k] = _check_type(k, kwargs[k], float)
            if kwargs[k] <= 0:
                raise ValueError(f"{k} = {kwargs[k]}; must be > 0 seconds")
    for k in SECTIONS:
        if k in kwargs and not isinstance(kwargs[k], dict):
            raise ValueError(f"[{k}] must be a table, got {kwargs[k]!r}")
    defaults_raw = raw.get("train", {})
    defaults = parse_train(defaults_raw, "[train]")
    members_raw = raw.get("members", [])
    if not isinstance(members_raw, list) or not members_raw:
        raise ValueError("the config has no [[members]]; add at least one, e.g. [[members]] model = \"resnet18\"")
    seeds = kwargs.get("seeds") or (kwargs.get("seed", 0),)
    members = tuple(_parse_member(m, i, defaults_raw, forced, seeds) for i, m in enumerate(members_raw))
    seen = set()
    for m in members:
        if m.id in seen:
            raise ValueError(f"member id {m.id!r} is used twice; give each [[members]] a unique id = \"...\"")
        seen.add(m.id)
    _check_repeats(members)
    _check_tensorboard(members)
    return ZooConfig(members=members, train=defaults, source=source, **kwargs)


def _parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    """A non-empty list of distinct integers >= 0."""
    ok = isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                   for v in value)
    if not ok or len(set(value)) != len(value):
        raise ValueError(f"{where} = {value!r}; expected a non-empty list of distinct integers >= 0, e.g. [0, 1, 2]")
    return tuple(value)


def _parse_cv(raw: Any) -> CVConfig:
    """``[cv]``: ``folds`` (an integer >= 2) and ``seed`` (an integer >= 0, default 0)."""
    _check_keys(raw, [f.name for f in fields(CVConfig)], "[cv]")
    if not raw:
        return CVConfig()
    if "folds" not in raw:
        raise ValueError("[cv] needs folds = K (an integer >= 2), e.g. folds = 5")
    folds = _check_type("[cv] folds", raw["folds"], int)
    seed = _check_type("[cv] seed", raw.get("seed", 0), int)
    if folds < 2 or seed < 0:
        raise ValueError(f"[cv] folds = {folds}, seed = {seed}; folds must be >= 2 and seed >= 0")
    return CVConfig(folds=folds, seed=seed)


def _check_repeats(members: tuple[MemberConfig, ...]) -> None:
    """Repeated members (several seeds) must share one list of seeds: repeat i of the zoo is seed i of each."""
    lists = {m.seeds for m in members if len(m.seeds) > 1}
    if len(lists) > 1:
        raise ValueError(f"repeated members have different seeds {sorted(lists)}; give every repeated member the "
                         f"same list (a member with one seed is shared by every repeat)")


def _check_tensorboard(members: tuple[MemberConfig, ...]) -> None:
    """Members with ``tensorboard = true`` need the tensorboard package, looked for without importing it."""
    wanting = [m.id for m in members if m.train.tensorboard]
    if wanting and not tensorboard_installed():
        raise ValueError(f"tensorboard = true (member(s) {', '.join(wanting)}) needs the tensorboard package, which "
                         f"is not installed: {INSTALL_HINT}, or set tensorboard = false")


def parse_train(raw: dict, where: str) -> TrainConfig:
    """Validate a ``[train]``-like table into :class:`TrainConfig` (missing keys take defaults)."""
    allowed = [f.name for f in fields(TrainConfig)]
    _check_keys(raw, allowed, where)
    values = {}
    for f in fields(TrainConfig):
        if f.name not in raw:
            continue
        v, name = raw[f.name], f"{where} {f.name}"
        if f.name == "augment":
            if not isinstance(v, dict):
                raise ValueError(f"{name} must be a table of {[a.name for a in fields(AugmentConfig)]}")
            v = _parse_augment(v, f"{where} augment")
        elif f.name in CHOICES:
            if v not in CHOICES[f.name]:
                raise ValueError(unknown_name(name, v, CHOICES[f.name], label="allowed", sort=False))
        elif f.name == "pretrained":
            if not isinstance(v, (bool, str)):
                raise ValueError(f"{name} = {v!r}; allowed: false, true (ImageNet) or a path to weights")
        elif f.name in ("amp", "channels_last"):
            if v != "auto" and not isinstance(v, bool):
                raise ValueError(f"{name} = {v!r}; allowed: \"auto\", true, false")
        else:
            v = _check_type(name, v, type(f.default))
        values[f.name] = v
    cfg = TrainConfig(**values)
    _check_ranges(cfg, where)
    return cfg


def config_differences(recorded: dict, given: dict) -> list[str]:
    """What differs between a run folder's recorded config and a resolved config, one line per key.

    Both are :meth:`ZooConfig.to_dict` dicts; members are matched by id. ``source`` and
    ``data_root`` are not compared (the same run may be continued from another folder or
    machine), and keys that ``recorded`` lacks inside a member or section it has are taken as
    matching: a run folder written by an older medzoo did not know them. ``tensorboard`` is not compared
    either: it only adds a view of the history, so a run may be resumed with it switched on or off. Returns e.g.
    ``["members.resnet18.train.epochs: 10 in the run folder, 5 now", "members.vgg11: not in the run folder"]``.
    """
    old, new = _flatten(recorded), _flatten(given)
    old_members = {m.get("id") for m in recorded.get("members", [])}
    out = []
    for key in sorted(old.keys() | new.keys()):
        if key.split(".")[0] in ("source", "data_root") or key.endswith("train.tensorboard"):
            continue
        if key == "dataset" and key in old and key in new and _same_dataset(old[key], new[key]):
            continue
        if key not in old:
            parts = key.split(".")
            if parts[0] == "members" and parts[1] not in old_members:
                out.append(f"members.{parts[1]}: not in the run folder")
        elif key not in new:
            parts = key.split(".")
            gone = parts[0] == "members" and parts[1] not in {m["id"] for m in given.get("members", [])}
            out.append(f"members.{parts[1]}: in the run folder, not in the config" if gone
                       else f"{key}: {old[key]!r} in the run folder, absent now")
        elif old[key] != new[key]:
            out.append(f"{key}: {old[key]!r} in the run folder, {new[key]!r} now")
    return list(dict.fromkeys(out))


def _same_dataset(recorded: str, given: str) -> bool:
    """One dataset: the same card name, or absolute paths ending in the same file or folder name
    (the run continued from another folder or machine, as for ``data_root``)."""
    if recorded == given:
        return True
    both_paths = Path(recorded).is_absolute() and Path(given).is_absolute()
    return both_paths and Path(recorded).name == Path(given).name


def _flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts (and the ``members`` list, keyed by id) -> ``{"a.b.c": leaf}``."""
    out = {}
    for k, v in d.items():
        if k == "members" and not prefix and isinstance(v, (list, tuple)):
            v = {m.get("id", str(i)): m for i, m in enumerate(v)}
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _parse_member(raw: Any, i: int, defaults_raw: dict, forced: dict, seeds: tuple[int, ...]) -> MemberConfig:
    where = f"[[members]] #{i + 1}"
    if not isinstance(raw, dict) or "model" not in raw:
        raise ValueError(f"{where} needs model = \"<name>\", got {raw!r}")
    train_keys = [f.name for f in fields(TrainConfig)]
    _check_keys(raw, ["model", "size", "id", "seeds", *train_keys], where)
    # Lazy: the model registry imports torch, and this module stays torch-free so that
    # medzoo.config checks the other sections of a config before torch loads.
    from medzoo.zoo.models import list_models, model_info

    model = raw["model"]
    if model not in list_models():
        raise ValueError(f"{where}: " + unknown_name("model", model, list_models(), label="allowed", sort=False))
    info = model_info(model)
    size = _check_type(f"{where} size", raw.get("size", info.default_size), int)
    if size < info.min_size:
        raise ValueError(f"{where}: size {size} is below {model}'s minimum input size {info.min_size}")
    member_id = str(raw.get("id", model))
    if not member_id or "/" in member_id or member_id.startswith(".") or TAG in member_id or "," in member_id:
        raise ValueError(f"{where}: id {member_id!r} must be a plain folder name without {TAG!r} "
                         f"(it marks repeats and folds) or ',' (it separates members in the tables)")
    merged = merge_tables(merge_tables(defaults_raw, {k: v for k, v in raw.items() if k in train_keys}), forced)
    member_seeds = _parse_seeds(raw["seeds"], f"{where} seeds") if "seeds" in raw else seeds
    return MemberConfig(id=member_id, model=model, size=size, train=parse_train(merged, f"{where} ({member_id})"),
                        seeds=member_seeds)


def _parse_augment(raw: dict, where: str) -> AugmentConfig:
    _check_keys(raw, [f.name for f in fields(AugmentConfig)], where)
    values = {f.name: _check_type(f"{where} {f.name}", raw[f.name], type(f.default))
              for f in fields(AugmentConfig) if f.name in raw}
    aug = AugmentConfig(**values)
    from medzoo.zoo.augment import check_augment  # lazy: it imports torch (see _parse_member)

    try:
        check_augment(asdict(aug))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return aug


def _check_ranges(cfg: TrainConfig, where: str) -> None:
    positive = ("epochs", "batch_size", "accumulate", "lr", "snapshots")
    non_negative = ("weight_decay", "momentum", "warmup_epochs", "focal_gamma", "patience", "mixup", "cutmix",
                    "unfreeze_after", "max_train_batches", "plateau_patience", "effective_batch")
    for k in positive:
        if getattr(cfg, k) <= 0:
            raise ValueError(f"{where} {k} = {getattr(cfg, k)}; must be > 0")
    for k in non_negative:
        if getattr(cfg, k) < 0:
            raise ValueError(f"{where} {k} = {getattr(cfg, k)}; must be >= 0")
    if cfg.effective_batch and (cfg.accumulate != 1 or cfg.effective_batch % cfg.batch_size):
        raise ValueError(f"{where} effective_batch = {cfg.effective_batch} must be a multiple of batch_size = "
                         f"{cfg.batch_size} and replaces accumulate (= {cfg.accumulate}); set one of the two")
    if not 0 <= cfg.label_smoothing < 1:
        raise ValueError(f"{where} label_smoothing = {cfg.label_smoothing}; allowed range [0, 1)")
    if cfg.snapshots > 1 and (cfg.schedule != "cosine" or cfg.epochs % cfg.snapshots
                              or cfg.warmup_epochs >= cfg.epochs // cfg.snapshots):
        raise ValueError(f"{where} snapshots = {cfg.snapshots} needs schedule = \"cosine\" (got {cfg.schedule!r}), "
                         f"epochs divisible by it (got epochs = {cfg.epochs}) and warmup_epochs (= "
                         f"{cfg.warmup_epochs}) shorter than one cycle: each snapshot ends one cosine cycle")
    if cfg.average != "none" and cfg.snapshots > 1:
        raise ValueError(f"{where} average = {cfg.average!r} and snapshots = {cfg.snapshots}: choose one (each makes "
                         f"the member's kept weights)")
    if not 0 < cfg.ema_decay < 1 or not 0 <= cfg.swa_start < 1:
        raise ValueError(f"{where} ema_decay = {cfg.ema_decay}, swa_start = {cfg.swa_start}; allowed ema_decay in "
                         f"(0, 1) and swa_start (the fraction of epochs before averaging starts) in [0, 1)")
    if not 0 < cfg.plateau_factor < 1:
        raise ValueError(f"{where} plateau_factor = {cfg.plateau_factor}; allowed range (0, 1)")


def _check_type(name: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} = {value!r}; expected {kind.__name__}")
    return value


def _check_device(device: str) -> None:
    if device in ("auto", "cpu", "cuda"):
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        return
    raise ValueError(f"device = {device!r}; allowed: auto, cpu, cuda, cuda:N")


def _check_keys(raw: dict, allowed, where: str) -> None:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table, got {raw!r}")
    for k in raw:
        if k not in allowed:
            raise ValueError(f"{where}: " + unknown_name("key", k, allowed, label="allowed"))

