"""Full-precision SR diffusion teachers (SR3, ResShift) with diffusers-style schedulers and feature taps.

Saved teachers record their custom components by module path (`["teachers.sr3", "SR3UNet"]`,
`["teachers.resshift", "ResShiftScheduler"]` in model_index.json) and import them from there: keep those paths.
"""

from teachers.base import Teacher, load_teacher
from teachers.resshift import ResShiftScheduler, ResShiftTeacher
from teachers.sr3 import SR3Teacher, SR3UNet, sr3_scheduler

TEACHER_CLASSES: dict[str, type[Teacher]] = {"SR3Teacher": SR3Teacher, "ResShiftTeacher": ResShiftTeacher}

__all__ = ["Teacher", "load_teacher", "SR3Teacher", "SR3UNet", "sr3_scheduler", "ResShiftScheduler",
           "ResShiftTeacher", "TEACHER_CLASSES"]
