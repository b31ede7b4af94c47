"""Batched training augmentation on the training device: one affine warp plus a per-image colour affine.

No per-image Python loop: every image's random parameters are drawn at once from a ``torch.Generator``,
flips, rotation and random resized crop become one ``affine_grid`` + ``grid_sample``, and
brightness/contrast jitter and the normalisation become one multiply-add per image and channel.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULTS = {"hflip": False, "vflip": False, "rotate": 0.0, "zoom": 0.0, "brightness": 0.0, "contrast": 0.0}
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's adjust_contrast


def check_augment(cfg: dict | None) -> dict:
    """Validate an augmentation config and fill in defaults (everything off).

    hflip, vflip: bool (probability 0.5) or a probability in [0, 1].
    rotate: maximum rotation in degrees (uniform in [-rotate, rotate]).
    zoom: random resized crop, a square crop whose side is a fraction in [1 - zoom, 1] of the image,
        at a random position inside it, resized back to the full image (0 <= zoom < 1).
    brightness, contrast: jitter factors uniform in [1 - b, 1 + b] (as torchvision's ColorJitter), 0 <= b < 1.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {unknown}; allowed: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    for key in ("hflip", "vflip"):
        p = 0.5 if out[key] is True else float(out[key])
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment.{key} must be a bool or a probability in [0, 1], got {out[key]!r}")
        out[key] = p
    for key, allowed in (("rotate", "[0, 180]"), ("zoom", "[0, 1)"), ("brightness", "[0, 1)"), ("contrast", "[0, 1)")):
        v = float(out[key])
        if not (0.0 <= v <= 180.0 if key == "rotate" else 0.0 <= v < 1.0):
            raise ValueError(f"augment.{key} must be in {allowed}, got {out[key]!r}")
        out[key] = v
    return out


def _uniform(n: int, half_width: float, generator: torch.Generator) -> torch.Tensor:
    """n values uniform in [-half_width, half_width] (float32, CPU)."""
    return (torch.rand(n, generator=generator) * 2.0 - 1.0) * half_width


def random_affine(n: int, height: int, width: int, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """Draw n warps -> theta [n, 2, 3] (CPU) for ``F.affine_grid`` (output -> input normalised coords).

    Input point = crop_scale * R(angle) * flip * output point + crop_centre, with the rotation done in
    pixel units so non-square images rotate without shearing.
    """
    flip_x = torch.where(torch.rand(n, generator=generator) < cfg["hflip"], -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < cfg["vflip"], -1.0, 1.0)
    angle = _uniform(n, math.radians(cfg["rotate"]), generator)
    scale = 1.0 - torch.rand(n, generator=generator) * cfg["zoom"]
    centre = (torch.rand(n, 2, generator=generator) * 2.0 - 1.0) * (1.0 - scale)[:, None]
    cos, sin = torch.cos(angle), torch.sin(angle)
    aspect = width / height  # normalised -> pixel: x * W/2, y * H/2
    theta = torch.empty(n, 2, 3)
    theta[:, 0, 0] = scale * cos * flip_x
    theta[:, 0, 1] = -scale * sin / aspect * flip_y
    theta[:, 1, 0] = scale * sin * aspect * flip_x
    theta[:, 1, 1] = scale * cos * flip_y
    theta[:, :, 2] = centre
    return theta


def color_affine(n: int, cfg: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n (brightness, contrast) factors -> (b [n], c [n]), both 1 when jitter is off."""
    b = 1.0 + _uniform(n, cfg["brightness"], generator)
    c = 1.0 + _uniform(n, cfg["contrast"], generator)
    return b, c


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """theta [B, 2, 3] -> sampling grid [B, H, W, 2], as ``F.affine_grid(..., align_corners=False)``.

    Built from two broadcast multiply-adds instead of a batched matmul over a [B, H*W, 3] base grid.
    """
    u = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    v = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]  # [B, 2, 3, 1, 1]
    grid = torch.empty(len(theta), height, width, 2, device=theta.device, dtype=theta.dtype)
    for k in range(2):
        torch.add(t[:, k, 0] * u, t[:, k, 1] * v[:, None] + t[:, k, 2], out=grid[..., k])
    return grid


def random_flips(x: torch.Tensor, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of x [B, C, H, W] left-right with probability ``cfg["hflip"]``, then upside down
    with probability ``cfg["vflip"]`` (exact index operations, any dtype) -> a new tensor like x."""
    n = len(x)
    for dim, p in ((3, cfg["hflip"]), (2, cfg["vflip"])):
        if p:
            pick = (torch.rand(n, generator=generator) < p).to(x.device, non_blocking=True).view(n, 1, 1, 1)
            x = torch.where(pick, x.flip(dim), x)
    return x


def augment_batch(x: torch.Tensor, cfg: dict | None, generator: torch.Generator,
                  mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Augment and normalise a batch on its device.

    x: [B, 3, H, W], uint8 (0..255) or float (0..1), any memory format; x itself is not modified.
    Returns float32 [B, 3, H, W] = ``warp((clamp(jitter(flip(x)), 0, 1) - mean) / std)``:
    - jitter: brightness (x * b) then contrast (blend with the image's mean gray level m:
      x * c + (1 - c) * b * m), clamped once; one multiply-add in place on the float copy of x.
    - warp: flips, rotation and random resized crop in one bilinear ``grid_sample`` (after jitter and
      normalisation, which is exact as both are per-channel affine), filling what it brings in from
      outside the image with 0, the mean colour after normalisation. Output NCHW-contiguous.
    - flip: only when flips are the only geometric change: exact, on the input (``random_flips``);
      the output then keeps x's memory format.
    Random parameters come from ``generator`` (a CPU generator), one set per image, so a batch is
    reproducible from the generator's state. ``cfg`` as ``check_augment``; None or all off: normalise only.
    """
    cfg = check_augment(cfg)
    n, _, h, w = x.shape
    scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
    warp = cfg["rotate"] or cfg["zoom"]
    if not warp and (cfg["hflip"] or cfg["vflip"]):
        x = random_flips(x, cfg, generator)  # flips alone need no resampling; cheaper on the uint8 input
    x = x.to(torch.float32, copy=True)  # the one float copy; everything below works in place on it
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    if cfg["brightness"] or cfg["contrast"]:
        b, c = (f.to(x.device, non_blocking=True).view(n, 1, 1, 1) for f in color_affine(n, cfg, generator))
        gray = x.mean(dim=(2, 3)) @ torch.tensor(GRAY, device=x.device) * scale  # [B] mean gray level in [0, 1]
        gain = b * c * scale * inv_std  # [B, 3, 1, 1]: x * gain + offset
        offset = ((1.0 - c) * b * gray.view(n, 1, 1, 1) - mean_t) * inv_std
        torch.addcmul(offset, x, gain, out=x)
        for k, (m, s) in enumerate(zip(mean, std)):  # clamp to [0, 1] before normalisation, channel by channel
            x[:, k].clamp_(-m / s, (1.0 - m) / s)  # scalar bounds: 4x faster than [1, 3, 1, 1] tensors
    else:
        torch.addcmul(-mean_t * inv_std, x, scale * inv_std, out=x)
    if warp:
        theta = random_affine(n, h, w, cfg, generator).to(x.device, non_blocking=True)
        x = F.grid_sample(x, affine_grid(theta, h, w), mode="bilinear", padding_mode="zeros", align_corners=False)
    return x



def mix_batch(x: torch.Tensor, mixup: float, cutmix: float, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix a normalised batch with a permutation of itself: mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019).

    x: float [B, 3, H, W]. ``mixup``, ``cutmix``: the alpha of the Beta(alpha, alpha) mixing weight,
    0 = off; with both on, each batch takes one of the two with probability 1/2 (as timm's ``Mixup``).
    Returns ``(x_mixed, perm [B] int64 on x's device, lam)``: the loss is ``lam * L(y) + (1 - lam) * L(y[perm])``.
    mixup: ``lam x + (1 - lam) x[perm]``. cutmix: a box of area ``1 - lam`` (centre uniform, clipped at the
    border) pasted from ``x[perm]``, lam then recomputed from the clipped box. One lam per batch, drawn
    from ``rng`` with the permutation, so a batch is reproducible from the generator's state.
    """
    n, _, h, w = x.shape
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(n)).to(x.device, non_blocking=True)
    if not use_cutmix:
        return x.mul(lam).add_(x.index_select(0, perm), alpha=1.0 - lam), perm, lam
    side = math.sqrt(1.0 - lam)
    cy, cx = rng.random() * h, rng.random() * w
    top, bottom = max(0, round(cy - side * h / 2)), min(h, round(cy + side * h / 2))
    left, right = max(0, round(cx - side * w / 2)), min(w, round(cx + side * w / 2))
    out = x.clone()
    out[:, :, top:bottom, left:right] = x.index_select(0, perm)[:, :, top:bottom, left:right]
    return out, perm, 1.0 - (bottom - top) * (right - left) / (h * w)
