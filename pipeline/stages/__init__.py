"""Training stages: each is a loss over a batch, written against the process interface (`teachers.process`), never
against a teacher class; the shared trainer runs them in recipe order.

| type            | trains  | loss |
| --------------- | ------- | ---- |
| teacher         | teacher | the process's own loss (DDPM: L1 on the noise; ResShift: MSE on x0) = `DirectStage` |
| direct          | student | the same, for the student (BI-DiffSR's training) |
| feature_distill | student | direct + spd_weight x SPD(student, twin teacher features) + output_weight x process loss to the teacher's output |
| one_step        | student | MSE between the student's one evaluation from x_T at T-1 and the teacher's deterministic sampler from the same x_T |
"""

from pipeline.stages.base import Stage
from pipeline.stages.direct import DirectStage
from pipeline.stages.feature_distill import FeatureDistillStage
from pipeline.stages.one_step import OneStepStage

__all__ = ["Stage", "DirectStage", "FeatureDistillStage", "OneStepStage"]
