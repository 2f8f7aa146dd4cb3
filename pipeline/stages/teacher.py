"""Stage `teacher`: train a full-precision teacher with its own loss (no pretrained teacher can be downloaded)."""

from __future__ import annotations

from torch import Tensor

from pipeline.stages.base import Stage
from teachers.base import Teacher


class TeacherStage(Stage):
    def __init__(self, teacher: Teacher):
        self.teacher = teacher

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.teacher.training_loss(batch["hr"], batch["cond"], generator=generator, denoiser=model)
        return loss, {"loss": loss.detach()}
