"""Stage `feature_distill`: direct_weight x the direct loss plus BiDM's Space Patched Distillation against the student's
full-precision twin (same layout, student started from its weights, so channels correspond) on the same
(x_t, y, t), plus, optionally, the process loss between the student's and the teacher's outputs (any teacher on the
same process)."""

from __future__ import annotations

from torch import Tensor

from pipeline.stages.base import Stage
from pipeline.stages.spd import spd_loss
from teachers.base import Teacher
from teachers.process import DiffusionProcess, denoise_batch, noisy_batch


class FeatureDistillStage(Stage):
    def __init__(self, teacher: Teacher, process: DiffusionProcess, features: list[str], spd_weight: float = 0.01,
                 spd_patches: int = 4, output_weight: float = 0.0, cross_timestep: bool = False,
                 direct_weight: float = 1.0):
        """`features`: the res-block features SPD pairs by name (empty when spd_weight is 0); `cross_timestep`: the
        student mixes in its own features from one step noisier (BiDM; the teacher runs without); `direct_weight`:
        the weight of the process loss to the data's target (0: the teacher's output is the only target)."""
        self.teacher, self.process, self.names = teacher, process, list(features)
        self.spd_weight, self.patches, self.output_weight = spd_weight, spd_patches, output_weight
        self.direct_weight = direct_weight
        self.cross_timestep = cross_timestep

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        b = noisy_batch(self.process, batch["hr"], batch["cond"], generator, lr=batch["lr"])
        if self.names:
            out, s_feats = denoise_batch(model, self.process, b, self.cross_timestep, return_features=True)
            t_out, t_feats = self.teacher.features(b.x_in, b.y_in, b.t)
        else:
            out = denoise_batch(model, self.process, b, self.cross_timestep)
            t_out = self.teacher.predict(b.x_in, b.y_in, b.t)
        direct = self.process.loss(out, b.target)
        loss, logs = self.direct_weight * direct, {"direct": direct.detach()}
        if self.names:
            spd = spd_loss(s_feats, t_feats, self.names, self.patches)
            loss = loss + self.spd_weight * spd
            logs["spd"] = spd.detach()
        if self.output_weight:
            match = self.process.loss(out, t_out)
            loss = loss + self.output_weight * match
            logs["output"] = match.detach()
        logs["loss"] = loss.detach()
        return loss, logs
