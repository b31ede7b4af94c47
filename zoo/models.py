"""Model registry and factory: the only way a medzoo member is built.

Every architecture is registered once in :data:`MODELS` with :func:`register`, its metadata beside
the builder (family, default and minimum input size, normalisation mean/std; the family says where
the classification head(s) and the first convolution are); ``create_model`` builds it with a new
head for ``num_classes``, optionally ``in_chans`` input channels and pretrained weights.
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


@dataclass(frozen=True)
class Family:
    """Where a family keeps its classification head(s) and its first convolution (module paths)."""

    heads: tuple[str, ...]
    first_conv: str


FAMILIES = {
    "resnet": Family(heads=("fc",), first_conv="conv1"),
    "densenet": Family(heads=("classifier",), first_conv="features.conv0"),
    "vgg": Family(heads=("classifier.6",), first_conv="features.0"),
    "squeezenet": Family(heads=("classifier.1",), first_conv="features.0"),
    "inception": Family(heads=("fc", "AuxLogits.fc"), first_conv="Conv2d_1a_3x3.conv"),
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
        """Where this model's head(s) and first convolution are."""
        return FAMILIES[self.family]


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


def _load_file(model: nn.Module, family: Family, path: Path) -> list[str]:
    """Load a state dict into ``model``; head tensors of another shape are dropped. Returns dropped keys."""
    state = _file_state_dict(path)
    own = model.state_dict()
    conv_key = f"{family.first_conv}.weight"
    if conv_key in state and state[conv_key].shape[1] == 3 and own[conv_key].shape[1] != 3:
        state[conv_key] = adapt_first_conv(state[conv_key], own[conv_key].shape[1])
    head_keys = tuple(f"{h}." for h in family.heads)
    dropped = [k for k, v in state.items() if k.startswith(head_keys) and k in own and v.shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = sorted(set(own) - set(state) - set(dropped))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"weights in {path} do not fit this model: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}, {len(wrong)} of another shape {wrong[:5]}"
        )
    model.load_state_dict(state, strict=False)
    return dropped


def create_model(name: str, num_classes: int, pretrained: bool | str | os.PathLike = False,
                 in_chans: int = 3) -> nn.Module:
    """Build registered model ``name`` with a fresh head for ``num_classes`` classes.

    pretrained: False (random init); True (torchvision's default ImageNet weights from the torch hub cache,
    ``$TORCH_HOME/hub/checkpoints``; FileNotFoundError when absent, never a download or a silent random
    init); or a path to a ``.pth``/``.pt`` state dict or a medzoo checkpoint (a dict whose ``"model"``
    holds the state dict). From a file, head tensors whose shape differs (another class count) are
    dropped with a warning naming them, and the head keeps its fresh init; any other mismatch is a
    ValueError. in_chans != 3 replaces the first convolution, its filters adapted from the RGB ones
    (see ``adapt_first_conv``). Input [B, in_chans, H, W] with H, W >= ``model_info(name).min_size``.
    """
    info = model_info(name)
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
    family = info.layout
    model = MODELS[name].target()
    from_file = isinstance(pretrained, (str, os.PathLike))
    if not (from_file or isinstance(pretrained, bool) or pretrained is None):
        raise ValueError(f"pretrained must be True, False or a path, got {pretrained!r}")
    if pretrained is True:
        model.load_state_dict(_imagenet_state_dict(name))
    for head in family.heads:
        _set(model, head, _new_head(model.get_submodule(head), num_classes))
    if info.family == "squeezenet":
        model.num_classes = num_classes
    if in_chans != 3:
        _replace_first_conv(model, family.first_conv, in_chans)
        if info.family == "inception":
            model.transform_input = False  # it mixes exactly three RGB channels
    if from_file:
        dropped = _load_file(model, family, Path(pretrained))
        if dropped:
            warnings.warn(f"{name}: head weights of another shape not loaded from {pretrained}: "
                          f"{', '.join(dropped)} (they keep their fresh initialisation)", stacklevel=2)
    return model


def head_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Parameters of the classification head(s) of a model built by ``create_model(name, ...)``."""
    return [p for head in model_info(name).layout.heads for p in model.get_submodule(head).parameters()]


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
