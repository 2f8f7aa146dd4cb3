"""Shape helpers every denoiser shares (students, teachers and the sampler): padding an image to the network's size
multiple and one timestep per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad (B, C, H, W) on the bottom/right to multiples of `multiple` (replicate where reflect cannot)."""
    ph, pw = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def per_sample_timesteps(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """t as a (B,) long tensor: a scalar is repeated, a (B,) or (B, 1) tensor kept; anything else is an error."""
    t = torch.as_tensor(t, device=device).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"t has {t.numel()} timesteps for a batch of {batch}; pass one per sample (or one in all)")
    return t
