"""Stages `teacher` and `direct`: a denoiser trained with its process's own loss, one timestep per sample."""

from __future__ import annotations

from torch import Tensor

from pipeline.stages.base import Stage
from teachers.process import DiffusionProcess, training_loss


class DirectStage(Stage):
    def __init__(self, process: DiffusionProcess, cross_timestep: bool = False):
        """`cross_timestep`: the model mixes in its own features from one step noisier (BiDM; `denoise_batch`)."""
        self.process, self.cross_timestep = process, cross_timestep

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        loss = training_loss(model, self.process, batch["hr"], batch["cond"], generator, self.cross_timestep,
                             lr=batch["lr"])
        return loss, {"loss": loss.detach()}
