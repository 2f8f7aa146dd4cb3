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


def select_rows(param: Tensor, group: Tensor | None) -> Tensor:
    """The (B or 1, C) rows of a (K, C) table for each sample's group."""
    if param.shape[0] == 1:
        return param
    if group is None:
        raise ValueError(f"a timestep-group index is required: this layer has {param.shape[0]} groups")
    return param.index_select(0, group)


def _select(param: Tensor, group: Tensor | None) -> Tensor:
    """The (B or 1, C, 1, 1) slice of a (K, C) table for each sample's group."""
    return select_rows(param, group)[:, :, None, None]


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

    def tables(self, group: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(shift_in, slope, shift_out) rows (B or 1, C) for each sample's group: what a fused kernel applies."""
        return tuple(select_rows(p, group) for p in (self.shift_in, self.slope, self.shift_out))

    def forward(self, y: Tensor, group: Tensor | None) -> Tensor:
        y = y + _select(self.shift_in, group)
        # nn.PReLU's own kernel (slope at y = 0, where exact zeros are common), with a per-sample (B, C, 1, 1)
        # slope that F.prelu does not take: the same values and gradients as torch.where(y > 0, y, slope * y) at a
        # tenth of its time on CPU, where torch.where is a scalar loop
        y = torch._prelu_kernel(y, _select(self.slope, group))
        return y + _select(self.shift_out, group)
