"""Full-precision SR diffusion teachers (SR3, ResShift) with diffusers-style schedulers and feature taps.

The classes are exported here because diffusers records a custom component by its top-level package
(`["teachers", "SR3UNet"]` in model_index.json) and imports it from there when loading: keep these names.
"""

from teachers.base import Teacher, load_teacher
from teachers.resshift import ResShiftScheduler, ResShiftTeacher
from teachers.sr3 import SR3Teacher, SR3UNet, sr3_scheduler

TEACHER_CLASSES: dict[str, type[Teacher]] = {"SR3Teacher": SR3Teacher, "ResShiftTeacher": ResShiftTeacher}

__all__ = ["Teacher", "load_teacher", "SR3Teacher", "SR3UNet", "sr3_scheduler", "ResShiftScheduler",
           "ResShiftTeacher", "TEACHER_CLASSES"]
