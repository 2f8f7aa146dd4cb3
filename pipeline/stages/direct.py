"""Stages `teacher` and `direct`: a denoiser trained with its process's own loss, one timestep per sample."""

from __future__ import annotations

from torch import Tensor

from pipeline.settings import require
from pipeline.stages.base import Stage, StageConfig
from teachers.process import DiffusionProcess, training_loss


class DirectStage(Stage):
    def __init__(self, process: DiffusionProcess, cross_timestep: bool = False):
        """`cross_timestep`: the model mixes in its own features from one step noisier (BiDM; `denoise_batch`)."""
        self.process, self.cross_timestep = process, cross_timestep

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        loss = training_loss(model, self.process, batch["hr"], batch["cond"], generator, self.cross_timestep,
                             lr=batch["lr"])
        return loss, {"loss": loss.detach()}


class TeacherStageConfig(StageConfig, type_name="teacher"):
    """Trains a new teacher (teacher.kind) with the process loss."""

    trains_teacher = True

    def check_setup(self, key, setup) -> None:
        super().check_setup(key, setup)
        require(not setup.recipe.teacher.path, f"{key}.type", "a teacher stage trains a new teacher; remove "
                                                              "teacher.path")

    def build(self, process, model, teacher) -> Stage:
        return DirectStage(process)


class DirectStageConfig(StageConfig, type_name="direct"):
    """Trains the student with the process loss to the data's target (BI-DiffSR's training)."""

    def build(self, process, model, teacher) -> Stage:
        return DirectStage(process, bool(model.config.cross_timestep_blocks))
