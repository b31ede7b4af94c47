"""Model registry and factory: the only way a medzoo member is built.

Every architecture is registered once in :data:`MODELS` with :func:`register`, its metadata beside
the builder (family, default and minimum input size, normalisation mean/std; the family says where
the first convolution is and which classification heads it can be built with); ``create_model`` builds
it with a new head for ``num_classes``, optionally ``in_chans`` input channels and pretrained weights.

Heads: "torchvision" is torchvision's architecture with a fresh final layer (what ImageNet weights and
older medzoo checkpoints fit); "small", for VGG and SqueezeNet, is medzoo's head for training from
scratch at small inputs (see :data:`FAMILIES`). ``head="auto"`` picks "small" from scratch where there
is one and "torchvision" when weights are loaded (:func:`resolve_head`); checkpoints record the head.
"""
from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.inception import BasicConv2d, InceptionA, InceptionAux, InceptionB, InceptionC
from torchvision.models.inception import InceptionD, InceptionE

from medzoo.core.names import unknown_name
from medzoo.core.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_CHOICES = ("auto", "torchvision", "small")


class SmallHead(nn.Sequential):
    """medzoo's own classification head for training from scratch (``head="small"``); see :data:`FAMILIES`.

    A plain ``nn.Sequential``: its type is how :func:`built_head` tells the head a model was built with.
    """


def _vgg_small_head(model: nn.Module, num_classes: int) -> None:
    """VGG: global average pool -> Linear(512, 512) -> ReLU -> Dropout -> Linear(512, num_classes).

    Replaces the 7x7 adaptive pool and torchvision's 25088 -> 4096 -> 4096 classifier: on inputs below
    224 px the last map is 1x1 to 3x3, so the 7x7 pool only replicates it (102.8 M weights for 512 numbers).
    """
    width = model.classifier[0].in_features // 49  # torchvision's head sees 512 channels x 7 x 7
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = SmallHead(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                 nn.Linear(width, num_classes))


def _squeezenet_small_head(model: nn.Module, num_classes: int) -> None:
    """SqueezeNet: Dropout -> 1x1 conv (512 -> num_classes, PyTorch's default init) -> global average pool.

    torchvision's head has a ReLU after the conv, so every logit is >= 0. Trained from scratch, a few
    large steps can push the conv's output below 0 everywhere: then every image's logits are all 0, no
    gradient reaches any parameter, and the loss stays at ln(num_classes) for good (measured on BreastMNIST
    with AdamW at lr 1e-3). Same parameters and state-dict keys as torchvision's head.
    """
    old = model.classifier
    model.classifier = SmallHead(nn.Dropout(old[0].p), nn.Conv2d(old[1].in_channels, num_classes, 1),
                                 nn.AdaptiveAvgPool2d(1))


@dataclass(frozen=True)
class Head:
    """One classification head a family can be built with.

    ``paths``: the modules holding the head's parameters (``head_parameters``; from a weights file, tensors
    under them that do not fit are dropped). ``build(model, num_classes)`` puts the head in place; None for
    torchvision's head: a fresh final layer for ``num_classes`` at each path, the rest kept.
    ``description``: one line for ``medzoo models``, C standing for the class count.
    """

    paths: tuple[str, ...]
    description: str
    build: Callable[[nn.Module, int], None] | None = None


@dataclass(frozen=True)
class Family:
    """Where a family keeps its first convolution (module path) and the heads it can be built with.

    ``heads`` always has ``"torchvision"`` (the architecture ImageNet weights fit) and, where the family has
    one, ``"small"``: medzoo's head for training from scratch.
    """

    first_conv: str
    heads: dict[str, Head]


FAMILIES = {
    "resnet": Family(first_conv="conv1", heads={
        "torchvision": Head(("fc",), "global average pool -> Linear(features, C)")}),
    "densenet": Family(first_conv="features.conv0", heads={
        "torchvision": Head(("classifier",), "ReLU -> global average pool -> Linear(features, C)")}),
    "vgg": Family(first_conv="features.0", heads={
        "torchvision": Head(("classifier.6",), "7x7 adaptive average pool -> Linear(25088, 4096) -> ReLU -> Dropout "
                                               "-> Linear(4096, 4096) -> ReLU -> Dropout -> Linear(4096, C)"),
        "small": Head(("classifier",), "global average pool -> Linear(512, 512) -> ReLU -> Dropout -> Linear(512, C)",
                      _vgg_small_head)}),
    "squeezenet": Family(first_conv="features.0", heads={
        "torchvision": Head(("classifier.1",), "Dropout -> 1x1 conv (512 -> C) -> ReLU -> global average pool "
                                               "(logits >= 0)"),
        "small": Head(("classifier.1",), "Dropout -> 1x1 conv (512 -> C) -> global average pool (no ReLU: logits "
                                         "can be negative)", _squeezenet_small_head)}),
    "inception": Family(first_conv="Conv2d_1a_3x3.conv", heads={
        "torchvision": Head(("fc", "AuxLogits.fc"), "global average pool -> Dropout -> Linear(2048, C); auxiliary "
                                                    "head on Mixed_6e -> Linear(768, C) while training")}),
}


@dataclass(frozen=True)
class ModelInfo:
    """What the data pipeline needs to know about a registered model: its registry entry's metadata.

    ``min_size`` is the smallest square input (pixels) the model trains on, forward and backward in
    train mode; ``default_size`` is the size its ImageNet weights were trained at; ``mean``/``std``
    (RGB, in [0, 1] units) normalise its inputs.
    """

    name: str
    family: str
    default_size: int
    min_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def layout(self) -> Family:
        """Where this model's first convolution is, and its heads."""
        return FAMILIES[self.family]

    @property
    def heads(self) -> dict[str, str]:
        """The heads this model can be built with (``create_model``'s ``head``): {name: one-line description}."""
        return {kind: head.description for kind, head in self.layout.heads.items()}


MODELS = Registry("model")


def register(name: str, family: str, *, min_size: int = 32, default_size: int = 224,
             mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
             description: str | None = None) -> Callable:
    """Decorator: register ``builder() -> nn.Module`` (the ImageNet architecture, 1000 classes) as ``name``.

    The keyword arguments are the entry's metadata (see :class:`ModelInfo`). Raises ValueError for
    a name registered twice or an unknown family.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} for model {name!r}; known: {', '.join(FAMILIES)}")
    return MODELS.register(name, description=description, family=family, default_size=default_size,
                           min_size=min_size, mean=mean, std=std)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(weights=None)


# Minimum size 32 px: the last stage of ResNet, DenseNet, VGG and SqueezeNet then sees a 1x1 map. Some
# run on less (ResNet on 8 px), but their deepest stages then only see padding; VGG fails below 32.
for _depth in (18, 34, 50, 101, 152):
    register(f"resnet{_depth}", "resnet", description=f"torchvision's ResNet-{_depth}")(
        _torchvision(f"resnet{_depth}"))
for _depth in (121, 161, 169, 201):
    register(f"densenet{_depth}", "densenet", description=f"torchvision's DenseNet-{_depth}")(
        _torchvision(f"densenet{_depth}"))
for _depth in (11, 13, 16, 19):
    register(f"vgg{_depth}", "vgg", description=f"torchvision's VGG-{_depth}")(_torchvision(f"vgg{_depth}"))
    register(f"vgg{_depth}_bn", "vgg", description=f"torchvision's VGG-{_depth} with batch normalisation")(
        _torchvision(f"vgg{_depth}_bn"))
for _version in ("1_0", "1_1"):
    register(f"squeezenet{_version}", "squeezenet",
             description=f"torchvision's SqueezeNet {_version.replace('_', '.')}")(_torchvision(f"squeezenet{_version}"))


class SmallInputInceptionAux(InceptionAux):
    """torchvision's auxiliary Inception head, made to run on inputs below 299 px.

    On a Mixed_6e map of at least 17x17 (inputs >= 299 px) it is exactly torchvision's head
    (5x5 average pool, stride 3). Smaller maps (down to 3x3 at 75 px) are average-pooled adaptively to
    5x5 instead, where torchvision's head fails, so small inputs train with the auxiliary loss too.
    Same parameters and state-dict keys as ``InceptionAux``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 768, h, w] -> logits [B, num_classes]."""
        x = F.avg_pool2d(x, kernel_size=5, stride=3) if min(x.shape[-2:]) >= 17 else F.adaptive_avg_pool2d(x, 5)
        x = self.conv1(self.conv0(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("inception_v3", "inception", min_size=75, default_size=299)
def _inception_v3() -> nn.Module:
    """torchvision's Inception v3 with its auxiliary head, on inputs down to 75 px."""
    blocks = [BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE, SmallInputInceptionAux]
    # transform_input re-normalises ImageNet-normalised input to the [-1, 1] range Google's weights expect.
    return torchvision.models.inception_v3(
        weights=None, aux_logits=True, transform_input=True, init_weights=True, inception_blocks=blocks
    )


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS.names())


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model; ValueError naming the closest names for an unknown one.

    The error lists the names sorted, as :func:`list_models` does (the registry keeps them in
    registration order).
    """
    if name not in MODELS:
        raise ValueError(unknown_name("model", name, list_models()))
    return ModelInfo(name, **MODELS[name].meta)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _new_head(old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes)
    head = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)  # torchvision's initialisation of SqueezeNet's final conv
    nn.init.zeros_(head.bias)
    return head


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB filters [O, 3, k, k] -> [O, in_chans, k, k]: the mean over RGB, times 3 / in_chans.

    The scale keeps activations unchanged for an image whose channels are all equal (a grayscale
    image fed as one channel gives what its 3-channel copy gave).
    """
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_chans, 1, 1) * (3.0 / in_chans)


def _replace_first_conv(model: nn.Module, path: str, in_chans: int) -> None:
    old = model.get_submodule(path)
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(adapt_first_conv(old.weight, in_chans))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _set(model, path, new)


def imagenet_weights_path(name: str) -> tuple[Path, str]:
    """(file in the torch hub cache, download URL) of torchvision's default ImageNet weights for ``name``."""
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    path, url = imagenet_weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained ImageNet weights for {name!r} not found: {path} is missing "
            f"(torch hub cache {path.parent}; set TORCH_HOME to use another cache). medzoo never downloads "
            f"them itself. On a machine with internet run "
            f"`python -c \"import torchvision; torchvision.models.{name}(weights='DEFAULT')\"` "
            f"(or download {url}) and copy the file to {path}, or pass pretrained=<path to a .pth state dict>"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(path)!r} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # never unpickle arbitrary objects from a weights file
        raise ValueError(f"{path} holds more than tensors and plain values, so it is not loaded as weights "
                         f"(a medzoo last.pt is a resume file: use that run's best.pt)") from None
    state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds neither a state dict nor a medzoo checkpoint (a dict with key 'model')")
    prefixes = ("module.", "_orig_mod.")  # DistributedDataParallel and torch.compile wrappers
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_file(model: nn.Module, name: str, kind: str, path: Path) -> list[str]:
    """Load a state dict into ``model`` (``name`` built with head ``kind``); returns the dropped head keys.

    Head tensors that do not fit (another shape, or a key this head lacks) are dropped; any other
    mismatch is a ValueError.
    """
    family = model_info(name).layout
    state = _file_state_dict(path)
    own = model.state_dict()
    conv_key = f"{family.first_conv}.weight"
    if conv_key in state and state[conv_key].shape[1] == 3 and own[conv_key].shape[1] != 3:
        state[conv_key] = adapt_first_conv(state[conv_key], own[conv_key].shape[1])
    head_keys = tuple(f"{h}." for h in family.heads[kind].paths)
    dropped = [k for k, v in state.items() if k.startswith(head_keys) and (k not in own or v.shape != own[k].shape)]
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = sorted(set(own) - set(state) - set(dropped))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        other = [h for h in family.heads if h != kind]
        hint = (f"; this {name} has the {kind!r} head: weights saved from one with the {other[0]!r} head "
                f"load with head={other[0]!r}") if other else ""
        raise ValueError(
            f"weights in {path} do not fit this model: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}, {len(wrong)} of another shape {wrong[:5]}{hint}"
        )
    model.load_state_dict(state, strict=False)
    return dropped


def resolve_head(name: str, pretrained: bool | str | os.PathLike | None = False, head: str = "auto") -> str:
    """The head ``create_model(name, ..., pretrained=pretrained, head=head)`` builds: "torchvision" or "small".

    ``head="auto"`` is "small" from scratch (``pretrained`` False or None) where the family has a small head
    (:attr:`ModelInfo.heads`), otherwise "torchvision": loaded weights were trained with torchvision's head.
    ValueError for an unknown model, a head outside :data:`HEAD_CHOICES` or one the family lacks.
    """
    info = model_info(name)
    if head not in HEAD_CHOICES:
        raise ValueError(f"head must be one of {', '.join(map(repr, HEAD_CHOICES))}, got {head!r}")
    if head == "auto":
        return "small" if not pretrained and "small" in info.heads else "torchvision"
    if head not in info.heads:
        raise ValueError(f"{name} has no {head!r} head; its heads: {', '.join(map(repr, info.heads))} (or 'auto')")
    return head


def built_head(model: nn.Module) -> str:
    """The head a model from ``create_model`` has: "small" when it holds a :class:`SmallHead`, else "torchvision"."""
    return "small" if any(isinstance(m, SmallHead) for m in model.modules()) else "torchvision"


def create_model(name: str, num_classes: int, pretrained: bool | str | os.PathLike = False,
                 in_chans: int = 3, head: str = "auto") -> nn.Module:
    """Build registered model ``name`` with a fresh head for ``num_classes`` classes.

    pretrained: False (random init); True (torchvision's default ImageNet weights from the torch hub cache,
    ``$TORCH_HOME/hub/checkpoints``; FileNotFoundError when absent, never a download or a silent random
    init); or a path to a ``.pth``/``.pt`` state dict or a medzoo checkpoint (a dict whose ``"model"``
    holds the state dict). From a file, head tensors that do not fit the head (another class count, a
    key it lacks) are dropped with a warning naming them, and the head keeps its fresh init; any other
    mismatch is a ValueError. in_chans != 3 replaces the first convolution, its filters adapted from the RGB
    ones (see ``adapt_first_conv``). head: "torchvision" (the architecture ImageNet weights fit), "small"
    (medzoo's head for training from scratch, where the family has one: :attr:`ModelInfo.heads`) or "auto"
    (:func:`resolve_head`: "small" from scratch, "torchvision" with weights). Input [B, in_chans, H, W]
    with H, W >= ``model_info(name).min_size`` -> logits [B, num_classes] (see :func:`forward_logits`).
    """
    info = model_info(name)
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
    from_file = isinstance(pretrained, (str, os.PathLike))
    if not (from_file or isinstance(pretrained, bool) or pretrained is None):
        raise ValueError(f"pretrained must be True, False or a path, got {pretrained!r}")
    kind = resolve_head(name, pretrained, head)
    family = info.layout
    model = MODELS[name].target()
    if pretrained is True:
        model.load_state_dict(_imagenet_state_dict(name))
    spec = family.heads[kind]
    if spec.build is None:
        for path in spec.paths:
            _set(model, path, _new_head(model.get_submodule(path), num_classes))
    else:
        spec.build(model, num_classes)
    if info.family == "squeezenet":
        model.num_classes = num_classes
    if in_chans != 3:
        _replace_first_conv(model, family.first_conv, in_chans)
        if info.family == "inception":
            model.transform_input = False  # it mixes exactly three RGB channels
    if from_file:
        dropped = _load_file(model, name, kind, Path(pretrained))
        if dropped:
            warnings.warn(f"{name}: head weights that do not fit its {kind!r} head not loaded from {pretrained}: "
                          f"{', '.join(dropped)} (they keep their fresh initialisation)", stacklevel=2)
    return model


def head_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Parameters of the classification head(s) of a model built by ``create_model(name, ...)``, either head."""
    paths = model_info(name).layout.heads[built_head(model)].paths
    return [p for path in paths for p in model.get_submodule(path).parameters()]


def set_backbone_trainable(model: nn.Module, name: str, trainable: bool) -> None:
    """Freeze (``trainable=False``) or unfreeze every parameter except the head(s); the head stays trainable.

    Only ``requires_grad`` changes: BatchNorm layers still update their running statistics in train mode.
    """
    head = {id(p) for p in head_parameters(model, name)}
    for p in model.parameters():
        p.requires_grad_(trainable or id(p) in head)


def forward_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [B, C, H, W] -> (logits [B, num_classes], auxiliary logits [B, num_classes] or None).

    Only Inception in train mode has auxiliary logits (torchvision returns ``InceptionOutputs``).
    """
    out = model(x)
    if isinstance(out, torchvision.models.InceptionOutputs):
        return out.logits, out.aux_logits
    return out, None
