"""Whether a model's weights are all finite: checked before a stage is saved, before a model is published and
whenever one is loaded, so a NaN never travels silently (an all-NaN student writes black images)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def nonfinite_tensors(weights: nn.Module | dict[str, Tensor]) -> list[str]:
    """Names of the floating-point parameters and buffers holding NaN or infinite values (one host sync in all)."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    named = [(name, t) for name, t in state.items() if isinstance(t, Tensor) and t.is_floating_point() and t.numel()]
    if not named:
        return []
    device = named[0][1].device
    finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def name_tensors(names: list[str]) -> str:
    """The first three names, and how many more, for a message."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_finite(weights: nn.Module | dict[str, Tensor], what: str) -> None:
    """A ValueError naming `what` and its first non-finite tensors when there are any."""
    bad = nonfinite_tensors(weights)
    if bad:
        raise ValueError(f"{what} holds NaN or infinite weights ({name_tensors(bad)}); it is damaged or its "
                         "training diverged")
