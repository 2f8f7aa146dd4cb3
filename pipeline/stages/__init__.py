"""Training stages: each is a loss over a batch, written against the process interface (`teachers.process`), never
against a teacher class; the shared trainer runs them in recipe order.

| type            | trains  | loss |
| --------------- | ------- | ---- |
| teacher         | teacher | the process's own loss (DDPM: L1 on the noise; ResShift: MSE on x0) = `DirectStage` |
| direct          | student | the same, for the student (BI-DiffSR's training) |
| feature_distill | student | direct + spd_weight x SPD(student, twin teacher features) + output_weight x process |
|                 |         | loss to the teacher's output |
| one_step        | student | MSE between the student's one evaluation from x_T at T-1 and the teacher's |
|                 |         | deterministic sampler from the same x_T |

A new stage type is one file here: a `Stage` (its loss) and a `StageConfig` subclass declared with
`type_name="..."` (its settings, their checks, and how it builds the stage), registered when the package loads.
"""

import importlib
import pkgutil

from pipeline.stages.base import LR_SCHEDULES, STAGE_CONFIGS, Stage, StageConfig, StageSetup
from pipeline.stages.direct import DirectStage, DirectStageConfig, TeacherStageConfig
from pipeline.stages.feature_distill import FeatureDistillStage, FeatureDistillStageConfig
from pipeline.stages.one_step import OneStepStage, OneStepStageConfig

__all__ = ["LR_SCHEDULES", "STAGE_CONFIGS", "Stage", "StageConfig", "StageSetup", "DirectStage", "DirectStageConfig",
           "TeacherStageConfig", "FeatureDistillStage", "FeatureDistillStageConfig", "OneStepStage",
           "OneStepStageConfig"]

for _module in pkgutil.iter_modules(__path__):  # a stage type is one file: importing it registers its settings
    importlib.import_module(f"{__name__}.{_module.name}")
