"""The seam between teachers, students and the pipeline: the denoiser call, padding, and the `Teacher`.

A denoiser is `forward(x_in, y_in, t, return_features=False)`: `x_in` the process's model input, `y_in` its model
condition (`process.model_condition(y)`: the bicubic-upsampled LR at HR size in pixel space, the LR at the latent size
for latent ResShift), `t` one integer timestep per sample; with
`return_features=True` it also returns its res-block outputs by name ("down.{level}.{block}", "mid.{block}",
"up.{level}.{block}", level 0 the finest). Teachers and students share it, so stages never care which model they hold.

A `Teacher` is a diffusers `DiffusionPipeline` of a denoiser (`unet`) and its diffusion process (`scheduler`, a
`teachers.process.DiffusionProcess`), saved and loaded as a diffusers-format folder. Every teacher kind (SR3, a
pixel-space ResShift UNet, the student's full-precision twin, ResShift's released Swin UNet on VQ latents, whose
autoencoder belongs to its process) is this one class: what differs is the denoiser and the process, never the code.
It is frozen after loading; `predict`, `features` and `sample` run under `no_grad` and, if `autocast_dtype` is set
(e.g. torch.bfloat16 on a GPU), under autocast.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ModelMixin
from diffusers.utils import logging as diffusers_logging
from torch import Tensor

import students.bidiffsr  # noqa: F401  the twin teachers' denoiser, for diffusers' loading
from students.finite import check_finite
from students.shapes import pad_to_multiple, per_sample_timesteps  # noqa: F401  (re-exported: their old home)
from teachers.process import DiffusionProcess, read_class_name, sample, training_loss  # noqa: F401  (re-exported)


class Teacher(DiffusionPipeline):
    """A full-precision denoiser `unet` on its process `scheduler`, for SR factor `scale`."""

    unet: torch.nn.Module
    scheduler: DiffusionProcess
    autocast_dtype: torch.dtype | None = None

    def __init__(self, unet: ModelMixin, scheduler: DiffusionProcess, scale: int = 4, degradation: str = "bicubic",
                 license: str = ""):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # the LR model it was trained on; the licence of released weights (a Hub licence id), which students carry
        self.register_to_config(scale=scale, degradation=degradation, license=license)

    @property
    def process(self) -> DiffusionProcess:
        """The teacher's diffusion process (diffusers names the component slot `scheduler`)."""
        return self.scheduler

    def freeze(self) -> "Teacher":
        """Eval mode and no gradients: the teacher's weights never change while a student learns from it."""
        self.unet.eval().requires_grad_(False)
        return self

    def check_scale(self, scale: int, source: str = "data") -> None:
        """A teacher trained for one SR factor must not be used on data of another."""
        if int(self.config.scale) != int(scale):
            raise ValueError(f"teacher was trained for x{self.config.scale} super-resolution but the {source} is "
                             f"x{scale}")

    def autocast(self):
        """The teacher's autocast context (a no-op unless `autocast_dtype` is set)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.unet.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def predict(self, x_in: Tensor, y_in: Tensor, t: Tensor) -> Tensor:
        """The denoiser's raw output on model-ready inputs (a `NoisyBatch`'s x_in, y_in) at timesteps `t`, frozen."""
        return self._denoise(x_in, y_in, self.process.model_time(torch.as_tensor(t, device=x_in.device)))

    def _denoise(self, x_in: Tensor, y_in: Tensor, time: Tensor) -> Tensor:
        with self.autocast():
            return self.unet(x_in, y_in, time).float()

    @torch.no_grad()
    def features(self, x_in: Tensor, y_in: Tensor, t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(output, res-block features by name) at timesteps `t`, frozen."""
        time = self.process.model_time(torch.as_tensor(t, device=x_in.device))
        with self.autocast():
            out, feats = self.unet(x_in, y_in, time, return_features=True)
        return out.float(), {k: v.float() for k, v in feats.items()}

    def training_loss(self, hr: Tensor, cond: Tensor, generator: torch.Generator | None = None,
                      denoiser: torch.nn.Module | None = None, lr: Tensor | None = None) -> Tensor:
        """Its process's loss for `denoiser` (default: its own, trainable) on one (HR, condition[, LR]) batch."""
        return training_loss(denoiser or self.unet, self.process, hr, cond, generator, lr=lr)

    @torch.no_grad()
    def sample(self, cond: Tensor, num_inference_steps: int | None = None, generator: torch.Generator | None = None,
               noise: Tensor | None = None, deterministic: bool | None = None, decode: bool = True,
               y: Tensor | None = None, lr: Tensor | None = None) -> Tensor:
        """Super-resolve with the teacher's process (`teachers.process.sample`, whose arguments these are).

        Returns:
            [0, 1] images (or the final x0 in the process's space, with `decode=False`); `deterministic=True` with a
            fixed `noise` always gives the same output.
        """
        return sample(self._denoise, self.process, cond, num_inference_steps, size_multiple=self.unet.size_multiple,
                      generator=generator, noise=noise, deterministic=deterministic, decode=decode, y=y, lr=lr)


def load_teacher(path: str | Path) -> Teacher:
    """Load a teacher folder written by `save_pretrained`; anything else is a clear error naming the path."""
    path = Path(path)
    index = path / "model_index.json"
    if not path.is_dir():
        raise FileNotFoundError(f"teacher folder {path} does not exist")
    if not index.is_file():
        raise ValueError(f"{path} is not a teacher folder: it has no model_index.json (write one with save_pretrained)")
    class_name = read_class_name(index, "teacher index")
    if class_name != Teacher.__name__:
        raise ValueError(f"{index} names {class_name!r}, which is not a teacher folder (expected {Teacher.__name__!r})")
    # diffusers loads only components whose module is already imported: the processes, SR3UNet and SwinUNet are
    # (importing this module runs `teachers/__init__`, which imports them all), the twin's BiDiffSRUNet is above
    diffusers_logging.disable_progress_bar()
    try:
        teacher = Teacher.from_pretrained(path).freeze()
    finally:
        diffusers_logging.enable_progress_bar()
    check_finite(teacher.unet, f"the teacher in {path}")
    return teacher
