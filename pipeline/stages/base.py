"""The stage interface."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Stage:
    """`loss(model, batch, generator) -> (loss, logs)`: `model` is the (possibly DDP-wrapped) trainable model,
    `batch` holds "hr" and "lr" patches in [0, 1] and "cond" (bicubic(LR), unclamped; a process clamps it if its
    convention says so) on the device, `generator` drives every random draw of the step."""

    def loss(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError
