"""The stage interface and the noising step the student stages share."""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn


class Stage:
    """`loss(model, batch, generator) -> (loss, logs)`: `model` is the (possibly DDP-wrapped) trainable model,
    `batch` holds "hr", "cond" and "lr" tensors on the device, `generator` drives every random draw of the step."""

    def loss(self, model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


def add_noise_per_sample(process, hr: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, noise, t) with one timestep per sample drawn uniformly from the DDPM process."""
    t = torch.randint(0, process.config.num_train_timesteps, (hr.shape[0],), device=hr.device, generator=generator)
    noise = randn_tensor(hr.shape, generator=generator, device=hr.device, dtype=hr.dtype)
    return process.add_noise(hr, noise, t), noise, t
