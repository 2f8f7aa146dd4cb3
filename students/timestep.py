"""Timestep-aware parameters of BI-DiffSR: the group index and the TaR shift / TaA RPReLU with K groups.

The official code picks one group for the whole batch from the first sample's timestep. Here every sample picks its
own group from its own timestep (a gather over the K copies), so a batch may mix timesteps; for a batch with one
timestep both agree.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def timestep_group(t: Tensor, num_groups: int, num_train_timesteps: int) -> Tensor:
    """g = clamp(floor(t * K / T), 0, K - 1) per sample; t of shape (B,) or (B, 1), integer or float."""
    t = t.reshape(-1)
    g = torch.div(t.long() * num_groups, num_train_timesteps, rounding_mode="floor")
    return g.clamp(0, num_groups - 1)


def _select(param: Tensor, group: Tensor | None) -> Tensor:
    """The (B or 1, C, 1, 1) slice of a (K, C) table for each sample's group."""
    if param.shape[0] == 1:
        return param[:, :, None, None]
    if group is None:
        raise ValueError(f"a timestep-group index is required: this layer has {param.shape[0]} groups")
    return param.index_select(0, group)[:, :, None, None]


class TimestepShift(nn.Module):
    """TaR: x + b_g with a learnable per-channel shift b of shape (K, C), initialised to 0."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(groups, channels))

    def forward(self, x: Tensor, group: Tensor | None) -> Tensor:
        return x + _select(self.bias, group)


class TimestepRPReLU(nn.Module):
    """TaA: RPReLU_g(y) = PReLU_g(y + beta0_g) + beta1_g, per channel, K groups (slopes 0.25, shifts 0)."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(groups, channels))
        self.slope = nn.Parameter(torch.full((groups, channels), 0.25))
        self.shift_out = nn.Parameter(torch.zeros(groups, channels))

    def forward(self, y: Tensor, group: Tensor | None) -> Tensor:
        y = y + _select(self.shift_in, group)
        y = torch.where(y > 0, y, y * _select(self.slope, group))  # nn.PReLU: slope at y = 0 (exact zeros are common here)
        return y + _select(self.shift_out, group)
