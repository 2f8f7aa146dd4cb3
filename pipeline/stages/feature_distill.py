"""Stage `feature_distill`: the direct loss plus BiDM's Space Patched Distillation against an SR3 teacher's
res-block outputs on the same (x_t, cond, t), optionally plus L1 to the teacher's output."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pipeline.stages.base import Stage, add_noise_per_sample
from pipeline.stages.spd import spd_loss
from teachers.base import Teacher


class FeatureDistillStage(Stage):
    def __init__(self, teacher: Teacher, student_taps: dict, teacher_taps: dict, spd_weight: float = 0.01,
                 spd_patches: int = 4, output_weight: float = 0.0, features: list[str] | None = None):
        """`student_taps` / `teacher_taps`: name -> feature shape of each model on the same probe input; every
        distilled feature must exist in both with the same shape."""
        self.teacher, self.spd_weight, self.patches, self.output_weight = teacher, spd_weight, spd_patches, output_weight
        self.process = teacher.scheduler
        self.names = list(features) if features else list(student_taps)
        for name in self.names:
            if name not in student_taps or name not in teacher_taps:
                raise ValueError(f"feature {name!r} is not tapped by both models; student: "
                                 f"{', '.join(student_taps)}; teacher: {', '.join(teacher_taps)}")
            if student_taps[name] != teacher_taps[name]:
                raise ValueError(f"feature {name!r} has shape {student_taps[name]} in the student but "
                                 f"{teacher_taps[name]} in the teacher; the teacher's widths must match the student's")

    def loss(self, model, batch, generator) -> tuple[Tensor, dict[str, Tensor]]:
        x_t, noise, t = add_noise_per_sample(self.process, batch["hr"], generator)
        out, s_feats = model(x_t, batch["cond"], t, return_features=True)
        t_out, t_feats = self.teacher.features(x_t, batch["cond"], t)
        direct = F.l1_loss(out.float(), noise)
        spd = spd_loss(s_feats, t_feats, self.names, self.patches)
        loss = direct + self.spd_weight * spd
        logs = {"loss": loss.detach(), "direct": direct.detach(), "spd": spd.detach()}
        if self.output_weight:
            match = F.l1_loss(out.float(), t_out)
            loss = loss + self.output_weight * match
            logs["output"] = match.detach()
        return loss, logs
