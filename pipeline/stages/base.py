"""The stage plug-in interface: a stage's settings (`StageConfig`, one subclass per stage type, registered by its
`type_name`) and the loss it trains with (`Stage`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from pipeline.degradations import MIN_PATCH
from pipeline.settings import require, require_name

if TYPE_CHECKING:
    from pipeline.recipe import Recipe
    from teachers.base import Teacher
    from teachers.process import DiffusionProcess

LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
STAGE_CONFIGS: dict[str, type[StageConfig]] = {}  # type name -> settings class, filled as the plug-ins are imported


class Stage:
    """`loss(model, batch, generator) -> (loss, logs)`: `model` is the (possibly DDP-wrapped) trainable model,
    `batch` holds "hr" and "lr" patches in [0, 1] and "cond" (bicubic(LR), unclamped; a process clamps it if its
    convention says so) on the device, `generator` drives every random draw of the step."""

    def loss(self, model: nn.Module, batch: dict[str, Tensor],
             generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def check_patch(self, patch: int) -> None:
        """Raise a ValueError when the stage cannot train on patch x patch HR crops (checked once, before training)."""


@dataclass
class StageSetup:
    """What the pre-flight check built that a stage's own checks need (`StageConfig.check_setup`)."""

    recipe: Recipe
    process: DiffusionProcess
    student: Any  # the recipe's student, built on the meta device
    pixels_per_position: int  # the student's size multiple times the process's latent cell, in pixels
    teacher_ready: bool  # a teacher exists before this stage (teacher.path or an earlier teacher stage)
    check_twin_teacher: Callable[[str, str], None]  # (key, what needs it): the teacher must be the student's twin


@dataclass
class StageConfig:
    """The settings every stage has; a stage type adds its own in a subclass declared with `type_name=...`."""

    type: str = ""
    steps: int = 0
    name: str = ""  # "" = the type
    batch_size: int = 4
    patch_size: int = 0  # 0: data.patch_size
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_accum: int = 1
    max_grad_norm: float = 0.0  # 0: no clipping
    ema_decay: float = 0.0  # 0: no EMA

    type_name: ClassVar[str] = ""
    trains_teacher: ClassVar[bool] = False  # trains the teacher's denoiser instead of the student
    needs_teacher: ClassVar[bool] = False  # learns from a teacher, which must exist before the stage

    def __init_subclass__(cls, type_name: str = "", **kwargs):
        super().__init_subclass__(**kwargs)
        if type_name:
            cls.type_name = type_name
            STAGE_CONFIGS[type_name] = cls

    def patch(self, data_patch_size: int) -> int:
        """The HR patch side this stage trains on: its own patch_size, else data.patch_size."""
        return self.patch_size or data_patch_size

    def check(self, key: str) -> None:
        """Check the values alone; `key` is the stage's place in the recipe (`stages[1]`). Raises SettingError."""
        require_name(self.name, f"{key}.name", "folders")
        require(self.steps > 0, f"{key}.steps", f"must be > 0, got {self.steps}")
        require(self.batch_size > 0, f"{key}.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.patch_size >= 0, f"{key}.patch_size", f"must be >= 0 (0: data.patch_size), got {self.patch_size}")
        require(self.lr > 0, f"{key}.lr", f"must be > 0, got {self.lr}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{key}.betas",
                f"must be two numbers in [0, 1), got {self.betas}")
        require(self.weight_decay >= 0, f"{key}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.lr_schedule in LR_SCHEDULES, f"{key}.lr_schedule",
                f"must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        require(0 <= self.warmup_steps <= self.steps, f"{key}.warmup_steps",
                f"must be in [0, steps], got {self.warmup_steps}")
        require(self.grad_accum >= 1, f"{key}.grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(self.max_grad_norm >= 0, f"{key}.max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        require(0 <= self.ema_decay < 1, f"{key}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")

    def check_setup(self, key: str, setup: StageSetup) -> None:
        """Check the stage against the rest of the recipe and the models it builds. Raises SettingError."""
        d, scale = setup.recipe.data, setup.recipe.run.scale
        patch = self.patch(d.patch_size)
        require(patch % scale == 0, f"{key}.patch_size", f"must be a multiple of run.scale={scale}, got {patch}")
        require(d.degradation != "realesrgan" or patch >= MIN_PATCH, f"{key}.patch_size",
                f"must be at least {MIN_PATCH} with realesrgan degradations (the blurs must fit the shrunk patch), "
                f"got {patch}")
        require(patch % setup.pixels_per_position == 0, f"{key}.patch_size",
                f"must be a multiple of {setup.pixels_per_position} (the student's size multiple x the process's "
                f"{setup.process.spatial_factor}-pixel latent cell), got {patch}")
        if self.needs_teacher:
            require(setup.teacher_ready, f"{key}.type", f"a {self.type} stage needs a teacher: set teacher.path or "
                                                        "train one in an earlier 'teacher' stage")

    def student_process(self, process: DiffusionProcess) -> DiffusionProcess | None:
        """The process the student lives on from this stage on, given the recipe's; None: the student's stays."""
        return None

    def build(self, process: DiffusionProcess, model: nn.Module, teacher: Teacher | None) -> Stage:
        """The stage's loss for `model` (the student, or the teacher's denoiser when `trains_teacher`) on `process`."""
        raise NotImplementedError
