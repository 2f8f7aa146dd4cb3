"""Stage `one_step` (SinSR / BiMaCoSR distillation, on any process): the student maps the start state
x_T = prior(y, eps) in one evaluation at the top timestep T-1 to what the teacher's deterministic sampler makes of
the same x_T; loss = MSE in the process's space. On ResShift this is BiMaCoSR's objective exactly
(x_T = y + kappa sqrt(eta_T) eps, F = SinSR's sampler over all T steps); on BI-DiffSR's DDPM x_T is pure noise and
F the deterministic 50-step DDIM. The student's process becomes its one-step variant (output read as x0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from pipeline.stages.base import Stage
from teachers.base import Teacher
from teachers.process import DiffusionProcess


class OneStepStage(Stage):
    def __init__(self, teacher: Teacher, student_process: DiffusionProcess, teacher_steps: int | None = None):
        self.teacher, self.process, self.teacher_steps = teacher, student_process, teacher_steps
        self.top = student_process.num_train_timesteps - 1

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        cond = batch["cond"]
        size = self.teacher.unet.size_multiple * self.teacher.process.spatial_factor
        if cond.shape[-1] % size or cond.shape[-2] % size:
            raise ValueError(f"one_step needs patches that are multiples of the teacher's {size}; got "
                             f"{tuple(cond.shape[-2:])}")
        noise = randn_tensor(self.process.noise_shape(cond.shape), generator=generator, device=cond.device,
                             dtype=cond.dtype)
        y = self.process.encode_condition(cond)  # teacher and student share the process's space
        target = self.teacher.sample(cond, self.teacher_steps, noise=noise, deterministic=True, decode=False, y=y)
        x_T = self.process.prior(y, noise)
        t = torch.full((cond.shape[0],), self.top, device=cond.device, dtype=torch.long)
        out = model(self.process.model_input(x_T, t), self.process.model_condition(y), t)
        x0 = self.process.predict_x0(out, x_T, t, y, clip=False)
        loss = F.mse_loss(x0.float(), target)
        return loss, {"loss": loss.detach()}
