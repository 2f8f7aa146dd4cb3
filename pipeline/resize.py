"""Bicubic resizing as the SR benchmarks define it.

- `imresize_down`: MATLAB's `imresize(img, 1/s)` (bicubic, a = -0.5, antialiased when shrinking, symmetric
  boundary), the convention of every standard LR benchmark pack. Each axis is one dense (out, in) weight matrix, so
  a whole batch resizes with two matrix products in float64.
- `imresize_up`: MATLAB's bicubic upscaling, the "Bicubic" baseline row of the benchmark tables.
- `upsample_cond`: the BI-DiffSR condition, the LR upsampled by s with OpenCV's INTER_CUBIC (a = -0.75, no
  antialiasing, half-pixel centres, clamped borders), which is exactly torch's bicubic with align_corners=False.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


def _cubic(x: Tensor) -> Tensor:
    """MATLAB's bicubic kernel (a = -0.5)."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


@lru_cache(maxsize=64)
def _weight_matrix(in_len: int, out_len: int, scale: float) -> Tensor:
    """(out_len, in_len) matrix of MATLAB imresize's contributions along one axis."""
    antialias = scale < 1
    width = 4.0 / scale if antialias else 4.0
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]  # 1-based source positions
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if antialias else _cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])  # symmetric padding
    src = mirror[(idx.long() - 1) % (2 * in_len)]
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    matrix.scatter_add_(1, src, w)
    return matrix


def imresize_up(img: Tensor, scale: int) -> Tensor:
    """MATLAB `imresize(img, scale, 'bicubic')` for an integer upscale (a = -0.5); the "Bicubic" row of the SR
    tables (Set5 x4: 28.43 dB / 0.8111). Float64 in the input's value range."""
    h, w = img.shape[-2:]
    mh = _weight_matrix(h, h * scale, float(scale)).to(img.device)
    mw = _weight_matrix(w, w * scale, float(scale)).to(img.device)
    return mh @ img.double() @ mw.T


def imresize_down(img: Tensor, scale: int) -> Tensor:
    """MATLAB `imresize(img, 1/scale, 'bicubic')` of (..., H, W) images whose sides are multiples of `scale`.

    Returns float64 in the input's value range (round and clamp yourself to store it as 8-bit)."""
    h, w = img.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image of size {h}x{w} is not a multiple of the scale {scale}; crop it first (modcrop)")
    mh = _weight_matrix(h, h // scale, 1.0 / scale).to(img.device)
    mw = _weight_matrix(w, w // scale, 1.0 / scale).to(img.device)
    return mh @ img.double() @ mw.T


def modcrop(img: Tensor, scale: int) -> Tensor:
    """Crop (..., H, W) from the bottom/right so that H and W are multiples of `scale`."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def make_lr(hr_uint8: Tensor, scale: int) -> Tensor:
    """The benchmark LR of an 8-bit HR image (C, H, W) or (B, C, H, W): modcrop, then MATLAB bicubic on 8-bit data,
    which resizes the height first and rounds to 8 bits after each axis (its resize kernel keeps the input class).
    Matches the Set5/Set14 LR packs on more than 99% of pixels, within 2 grey levels elsewhere."""
    hr = modcrop(hr_uint8, scale).double()
    h, w = hr.shape[-2:]
    mh = _weight_matrix(h, h // scale, 1.0 / scale).to(hr.device)
    mw = _weight_matrix(w, w // scale, 1.0 / scale).to(hr.device)
    tall = (mh @ hr).round().clamp(0, 255)
    return (tall @ mw.T).round().clamp(0, 255).to(torch.uint8)


def upsample_cond(lr: Tensor, scale: int) -> Tensor:
    """The condition image: LR in [0, 1] (B, C, h, w) upsampled to (s h, s w) with OpenCV-style bicubic."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
