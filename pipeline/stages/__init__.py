"""Training stages: each is a loss over a batch; the shared trainer runs them in recipe order.

| type            | trains  | loss |
| --------------- | ------- | ---- |
| teacher         | teacher | the teacher's own loss (SR3: L1 on noise; ResShift: MSE on x0) |
| direct          | student | L1 between predicted and true noise (BI-DiffSR's training) |
| feature_distill | student | direct + spd_weight x SPD(student, teacher res-block features) [+ output L1 to the teacher] |
| one_step        | student | MSE between the student's one-step x0 and the teacher's deterministic 50-step DDIM output |
"""

from pipeline.stages.base import Stage
from pipeline.stages.direct import DirectStage
from pipeline.stages.feature_distill import FeatureDistillStage
from pipeline.stages.one_step import OneStepStage
from pipeline.stages.teacher import TeacherStage

__all__ = ["Stage", "TeacherStage", "DirectStage", "FeatureDistillStage", "OneStepStage"]
