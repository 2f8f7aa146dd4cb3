"""Stage `feature_distill`: direct_weight x the direct loss plus BiDM's Space Patched Distillation against the student's
full-precision twin (same layout, student started from its weights, so channels correspond) on the same
(x_t, y, t), plus, optionally, the process loss between the student's and the teacher's outputs (any teacher on the
same process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from pipeline.settings import require
from pipeline.stages.base import Stage, StageConfig
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


@dataclass
class FeatureDistillStageConfig(StageConfig, type_name="feature_distill"):
    """Distils from a teacher on the student's process: SPD on features (twin teachers) and/or its outputs."""

    spd_weight: float = 0.01
    spd_patches: int = 4
    output_weight: float = 0.0  # the process loss between student and teacher outputs
    direct_weight: float = 1.0  # the process loss to the data's target; 0: the teacher's output is the only target
    features: list[str] = field(default_factory=list)  # [] = every res-block feature both models tap

    needs_teacher = True

    def check(self, key: str) -> None:
        super().check(key)
        require(self.spd_weight >= 0 and self.output_weight >= 0, f"{key}.spd_weight", "loss weights must be >= 0")
        require(self.direct_weight >= 0, f"{key}.direct_weight", f"must be >= 0, got {self.direct_weight}")
        require(self.direct_weight + self.output_weight + self.spd_weight > 0, f"{key}.direct_weight",
                "direct_weight, output_weight and spd_weight are all 0: the stage would have no loss")
        require(self.spd_patches >= 1, f"{key}.spd_patches", f"must be >= 1, got {self.spd_patches}")

    def check_setup(self, key, setup) -> None:
        super().check_setup(key, setup)
        if self.spd_weight == 0:
            return
        setup.check_twin_teacher(f"{key}.spd_weight", "Space Patched Distillation (spd_weight > 0)")
        s = setup.recipe.student
        require(s.init_from_teacher or bool(s.init), "student.init_from_teacher",
                f"{key} uses SPD, whose channel-wise Gram matrices only carry signal when the student starts from the "
                "teacher's weights (BiDM); set student.init_from_teacher = true")
        known = setup.student.feature_names() if self.features else []
        for name in self.features:
            require(name in known, f"{key}.features",
                    f"{name!r} is not a res-block feature of the student; it has {', '.join(sorted(known))}")
        grid = self.spd_patches * setup.pixels_per_position
        patch = self.patch(setup.recipe.data.patch_size)
        require(patch % grid == 0, f"{key}.patch_size",
                f"SPD splits every feature map into a {self.spd_patches}x{self.spd_patches} grid, so the patch size "
                f"must be a multiple of {grid} (spd_patches x 2^(levels - 1)); got {patch}")

    def build(self, process, model, teacher) -> Stage:
        names = []
        if self.spd_weight > 0:
            why = model.layout_mismatch(teacher.unet)
            if why:  # the recipe check catches this up front; a hand-edited folder could still get here
                raise ValueError(f"stage {self.name!r}: SPD needs the student's full-precision twin as teacher: {why}")
            names = list(self.features) or model.feature_names()
        return FeatureDistillStage(teacher, process, names, self.spd_weight, self.spd_patches, self.output_weight,
                                   bool(model.config.cross_timestep_blocks), self.direct_weight)
