"""Stage `feature_distill`: the direct loss plus BiDM's Space Patched Distillation against the student's
full-precision twin (same layout, student started from its weights, so channels correspond) on the same
(x_t, y, t), plus, optionally, the process loss between the student's and the teacher's outputs (any teacher on the
same process)."""

from __future__ import annotations

from torch import Tensor

from pipeline.stages.base import Stage
from pipeline.stages.spd import spd_loss
from teachers.base import Teacher
from teachers.process import DiffusionProcess, noisy_batch


class FeatureDistillStage(Stage):
    def __init__(self, teacher: Teacher, process: DiffusionProcess, features: list[str], spd_weight: float = 0.01,
                 spd_patches: int = 4, output_weight: float = 0.0):
        """`features`: the res-block features SPD pairs by name (empty when spd_weight is 0)."""
        self.teacher, self.process, self.names = teacher, process, list(features)
        self.spd_weight, self.patches, self.output_weight = spd_weight, spd_patches, output_weight

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        b = noisy_batch(self.process, batch["hr"], batch["cond"], generator)
        if self.names:
            out, s_feats = model(b.x_in, b.y, b.t, return_features=True)
            t_out, t_feats = self.teacher.features(b.x_in, b.y, b.t)
        else:
            out, t_out = model(b.x_in, b.y, b.t), self.teacher.predict(b.x_in, b.y, b.t)
        direct = self.process.loss(out, b.target)
        loss, logs = direct, {"direct": direct.detach()}
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
