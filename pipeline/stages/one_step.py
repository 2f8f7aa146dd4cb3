"""Stage `one_step` (SinSR / BiMaCoSR distillation, on any process): the student maps the start state x_T in one
evaluation at the top timestep to what the teacher's deterministic sampler makes of the same x_T, with SinSR's
optional inverse (`xt_weight`) and ground-truth (`gt_weight`) terms. SinSR's loss in numbered facts:
docs/one_step_distillation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from pipeline.settings import SettingError, require
from pipeline.stages.base import Stage, StageConfig
from teachers.base import Teacher
from teachers.process import DiffusionProcess


class OneStepStage(Stage):
    def __init__(self, teacher: Teacher, student_process: DiffusionProcess, teacher_steps: int | None = None,
                 xt_weight: float = 0.0, gt_weight: float = 0.0):
        self.teacher, self.process, self.teacher_steps = teacher, student_process, teacher_steps
        self.xt_weight, self.gt_weight = xt_weight, gt_weight
        self.top = student_process.num_train_timesteps - 1

    def check_patch(self, patch: int) -> None:
        size = self.teacher.unet.size_multiple * self.teacher.process.spatial_factor
        if patch % size:
            raise ValueError(f"one_step needs patches that are multiples of the teacher's {size} pixels; got {patch}")

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        cond, p = batch["cond"], self.process
        noise = randn_tensor(p.noise_shape(cond.shape), generator=generator, device=cond.device, dtype=cond.dtype)
        y = p.encode_condition(cond, batch["lr"])  # teacher and student share the process's space
        y_in = p.model_condition(y)
        target = self.teacher.sample(cond, self.teacher_steps, noise=noise, deterministic=True, decode=False, y=y)
        x_T = p.prior(y, noise)
        top = torch.full((cond.shape[0],), self.top, device=cond.device, dtype=torch.long)
        zero = torch.zeros_like(top)

        def student(x: Tensor, t: Tensor) -> Tensor:  # f(s(x), t): the input always scaled as at the top step
            return model(p.model_input(x, top), y_in, p.model_time(t))

        distill = F.mse_loss(p.predict_x0(student(x_T, top), x_T, top, y, clip=False).float(), target)
        loss, logs = distill, {"distill": distill.detach()}
        if self.xt_weight:
            inverse = F.mse_loss(student(target, zero).float(), x_T.float())
            loss, logs["xt"] = loss + self.xt_weight * inverse, inverse.detach()
        if self.gt_weight:
            z_gt = p.encode(batch["hr"])
            with torch.no_grad():
                x_T_gt = student(z_gt, zero)
            back = F.mse_loss(p.predict_x0(student(x_T_gt, top), x_T_gt, top, y, clip=False).float(), z_gt.float())
            loss, logs["gt"] = loss + self.gt_weight * back, back.detach()
        if len(logs) == 1:
            logs = {"loss": distill.detach()}
        else:
            logs["loss"] = loss.detach()
        return loss, logs


@dataclass
class OneStepStageConfig(StageConfig, type_name="one_step"):
    """Distils the teacher's sampler into one student evaluation from x_T (SinSR, BiMaCoSR)."""

    teacher_steps: int = 0  # the teacher sampler's steps for the targets; 0 = its process's default
    xt_weight: float = 0.0  # SinSR's learn_xT term: the student maps the teacher's output back to x_T (SinSR: 1)
    gt_weight: float = 0.0  # SinSR's finetune_use_gt term: the HR image through the student's inverse and back (1)

    needs_teacher = True

    def check(self, key: str) -> None:
        super().check(key)
        require(self.teacher_steps >= 0, f"{key}.teacher_steps",
                f"must be >= 0 (0: the process default), got {self.teacher_steps}")
        for name in ("xt_weight", "gt_weight"):
            require(getattr(self, name) >= 0, f"{key}.{name}", f"must be >= 0, got {getattr(self, name)}")

    def check_setup(self, key, setup) -> None:
        super().check_setup(key, setup)
        require(not setup.student.config.cross_timestep_blocks, "student.unet.cross_timestep_blocks",
                "a one-step student has no previous sampling step to mix in; set it to 0 for a recipe with a one_step "
                "stage")
        if self.teacher_steps:
            try:
                setup.process.inference_timesteps(self.teacher_steps)
            except ValueError as err:
                raise SettingError(f"{key}.teacher_steps", str(err)) from None

    def student_process(self, process):
        return process.one_step_variant()

    def build(self, process, model, teacher) -> Stage:
        return OneStepStage(teacher, process, self.teacher_steps or None, xt_weight=self.xt_weight,
                            gt_weight=self.gt_weight)
