"""The seam between teachers, students and the pipeline: the denoiser call, padding, and the `Teacher` base.

A denoiser is `forward(x_t, cond, t, return_features=False)`: `cond` is the bicubic-upsampled LR at HR size, `t`
one integer timestep per sample; with `return_features=True` it also returns its res-block outputs by name
("down.{level}.{block}", "mid.{block}", "up.{level}.{block}", level 0 the finest). Teachers and students share it,
so stages never care which model they hold.

A `Teacher` is a diffusers `DiffusionPipeline` of a denoiser (`unet`) and its diffusion process (`scheduler`),
saved and loaded as a diffusers-format folder. It is frozen after loading; `predict`, `features` and `sample` run
under `no_grad` and, if `autocast_dtype` is set (e.g. torch.bfloat16 on a GPU), under autocast. Its own training
loss (`training_loss`) is what the pipeline's teacher stage minimises.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin
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


class Teacher(DiffusionPipeline):
    """Base of the full-precision teachers: a denoiser `unet`, its process `scheduler` and the SR factor `scale`.
    Subclasses implement `training_loss(hr, cond, generator, denoiser)` and `sample(cond, ...)`."""

    unet: torch.nn.Module
    autocast_dtype: torch.dtype | None = None

    def __init__(self, unet: ModelMixin, scheduler: SchedulerMixin, scale: int = 4):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(scale=scale)

    def freeze(self) -> "Teacher":
        """Eval mode and no gradients: the teacher's weights never change while a student learns from it."""
        self.unet.eval().requires_grad_(False)
        return self

    def check_scale(self, scale: int, source: str = "data") -> None:
        """A teacher trained for one SR factor must not be used on data of another."""
        if int(self.config.scale) != int(scale):
            raise ValueError(f"teacher was trained for x{self.config.scale} super-resolution but the {source} is x{scale}")

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.unet.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def predict(self, x_t: Tensor, cond: Tensor, t: Tensor) -> Tensor:
        """The denoiser's raw output (noise for SR3, x0 for ResShift) on model-ready inputs, frozen."""
        with self._autocast():
            return self.unet(x_t, cond, t).float()

    @torch.no_grad()
    def features(self, x_t: Tensor, cond: Tensor, t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(output, res-block features by name), frozen; the names match the BI-DiffSR student's taps."""
        with self._autocast():
            out, feats = self.unet(x_t, cond, t, return_features=True)
        return out.float(), {k: v.float() for k, v in feats.items()}


def load_teacher(path: str | Path) -> Teacher:
    """Load a teacher folder written by `save_pretrained`; anything else is a clear error naming the path."""
    from diffusers.utils import logging as diffusers_logging

    from teachers import TEACHER_CLASSES  # here, not at module top: teachers/__init__ imports this module

    path = Path(path)
    index = path / "model_index.json"
    if not path.is_dir():
        raise FileNotFoundError(f"teacher folder {path} does not exist")
    if not index.is_file():
        raise ValueError(f"{path} is not a teacher folder: it has no model_index.json (write one with save_pretrained)")
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{index} is not a valid teacher index: {err}") from None
    if class_name not in TEACHER_CLASSES:
        raise ValueError(f"{index} names {class_name!r}, which is not a teacher; known: {', '.join(TEACHER_CLASSES)}")
    diffusers_logging.disable_progress_bar()
    try:
        return TEACHER_CLASSES[class_name].from_pretrained(path).freeze()
    finally:
        diffusers_logging.enable_progress_bar()
