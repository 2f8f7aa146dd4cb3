"""Stage `one_step` (SinSR / BiMaCoSR distillation, adapted to an SR3 teacher as decided for this project): the
student maps pure noise x_T at the top timestep T-1 straight to the teacher's deterministic 50-step DDIM output
from the same x_T; loss = MSE. The student's `prediction_type` becomes "sample" (x0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from pipeline.stages.base import Stage
from teachers.base import Teacher


class OneStepStage(Stage):
    def __init__(self, teacher: Teacher, teacher_steps: int = 50):
        self.teacher, self.teacher_steps = teacher, teacher_steps
        self.top = teacher.scheduler.config.num_train_timesteps - 1

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        cond = batch["cond"]
        x_T = randn_tensor(cond.shape, generator=generator, device=cond.device, dtype=cond.dtype)
        target = self.teacher.sample(cond, self.teacher_steps, noise=x_T)
        t = torch.full((cond.shape[0],), self.top, device=cond.device, dtype=torch.long)
        loss = F.mse_loss(model(x_T, cond, t).float(), target)
        return loss, {"loss": loss.detach()}
