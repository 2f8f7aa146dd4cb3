"""The models a run starts from: a new teacher for a teacher stage, a loaded teacher made ready to distil from, and
the student's first weights (random, a saved student, or its full-precision twin's)."""

from __future__ import annotations

import torch
from accelerate.utils import set_seed
from rich.console import Console

from pipeline.evaluate import AUTOCAST
from pipeline.preflight import CheckedRecipe
from students.bidiffsr import BiDiffSRUNet
from teachers import Teacher, build_teacher_denoiser


def new_teacher(checked: CheckedRecipe) -> Teacher:
    """The untrained teacher a teacher stage trains (teacher.kind), seeded by run.seed."""
    recipe, t = checked.recipe, checked.recipe.teacher
    set_seed(recipe.run.seed)
    denoiser = build_teacher_denoiser(t.kind, t.unet, checked.student_config)
    return Teacher(denoiser, checked.process, scale=recipe.run.scale, degradation=recipe.data.degradation)


def ready_teacher(teacher: Teacher, checked: CheckedRecipe, device: torch.device) -> Teacher:
    """A teacher to distil from: its scale checked against the recipe's, frozen, on `device`, with its autocast."""
    recipe = checked.recipe
    teacher.check_scale(recipe.run.scale, source=f"recipe's run.scale ({recipe.source})")
    teacher.freeze().to(device)
    teacher.autocast_dtype = AUTOCAST[recipe.teacher.autocast]
    return teacher


def initial_student(checked: CheckedRecipe, teacher: Teacher | None, console: Console) -> BiDiffSRUNet:
    """The student before its first stage: student.init's, else a fresh one (seeded by run.seed) that starts from a
    saved full-precision twin or from the (twin) teacher when the recipe says so."""
    s = checked.recipe.student
    saved = BiDiffSRUNet.from_pretrained(s.init) if s.init else None
    set_seed(checked.recipe.run.seed)
    student = BiDiffSRUNet(**checked.student_config)
    if saved is not None and (saved.config.binarizer != "none" or student.config.binarizer == "none"):
        return saved
    twin = saved if saved is not None else teacher.unet if s.init_from_teacher else None
    if twin is not None:  # a saved full-precision twin, or the teacher (a twin)
        fresh = student.init_from_teacher(twin)
        console.print(f"student starts from the {'saved twin' if saved is not None else 'teacher'}'s weights "
                      f"({len(fresh)} student-only tensors keep their initial values)")
    return student
