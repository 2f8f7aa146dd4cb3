"""Typed recipes: a TOML file parsed into dataclasses, every key checked.

A recipe has the tables [run], [data], [teacher], [student], [eval], [publish] and an ordered array [[stages]].
An unknown or mistyped key, a missing required key, a missing file or an impossible value raises `RecipeError`
naming the recipe file and the key (e.g. `recipes/x.toml: stages[1].lr: must be > 0, got -1.0`).
`--set key=value` overrides use the same dotted paths (`stages.0.steps=10`, `run.output_dir="out"`), with the
value read as a TOML literal (bare words are strings).
"""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.builtin_data import BUILTINS

STAGE_TYPES = ("teacher", "direct", "feature_distill", "one_step")
TEACHER_KINDS = ("sr3", "resshift")
PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
TRACKERS = ("tensorboard",)


class RecipeError(ValueError):
    """A recipe problem, always naming the file and the key."""

    def __init__(self, source: str, key: str, message: str):
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        self.source, self.key = source, key


@dataclass
class RunConfig:
    name: str = "bidistill"
    output_dir: str = "runs/bidistill"
    seed: int = 10
    scale: int = 4
    mixed_precision: str = "no"
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    resume: str = "latest"  # "latest", "never", or a checkpoint folder


@dataclass
class DataConfig:
    train: str = ""  # a local folder of HR images (loaded with datasets' imagefolder)
    train_hub: str = ""  # or a Hub dataset id
    builtin: str = ""  # or "skimage": photos bundled with scikit-image (train + val), for the quickstart
    train_split: str = "train"
    image_column: str = "image"
    patch_size: int = 256
    num_workers: int = 2
    val: str = ""  # a folder of HR images (Set5 layout)
    val_lr: str = ""  # optional folder of pre-made LR images named <stem>x<scale>.png; else made from HR
    val_max_images: int = 0  # 0: all
    val_crop: int = 0  # 0: full images; N: centre crop N x N HR (fast smoke evaluations)


@dataclass
class TeacherConfig:
    path: str = ""  # a trained teacher folder; required unless a `teacher` stage trains one
    kind: str = "sr3"  # the teacher a `teacher` stage builds
    unet: dict = field(default_factory=dict)  # SR3UNet arguments for a teacher built here
    scheduler: dict = field(default_factory=dict)  # ResShiftScheduler arguments (kind = "resshift")
    autocast: str = "no"  # "bf16"/"fp16": run the frozen teacher under autocast


@dataclass
class StudentConfig:
    init: str = ""  # start from a saved student folder instead of random weights
    unet: dict = field(default_factory=dict)  # BIDiffSRUNet arguments


@dataclass
class StageConfig:
    type: str = ""
    steps: int = 0
    name: str = ""
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
    # feature_distill
    spd_weight: float = 0.01
    spd_patches: int = 4
    output_weight: float = 0.0  # L1 between student and teacher outputs
    features: list[str] = field(default_factory=list)  # [] = every res-block feature both models tap
    # one_step
    teacher_steps: int = 50


@dataclass
class EvalConfig:
    enabled: bool = True
    num_inference_steps: int = 50
    seed: int = 10
    lpips: bool = True
    lpips_backbone: str = ""
    teacher: bool = True  # add the teacher's row
    grid_images: int = 4


@dataclass
class PublishConfig:
    push_to_hub: str = ""  # "owner/name"
    private: bool = False


@dataclass
class Recipe:
    source: str = "<recipe>"
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    stages: list[StageConfig] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir)

    def needs_teacher(self) -> bool:
        return any(s.type in ("feature_distill", "one_step") for s in self.stages) or bool(self.teacher.path)

    def trains_teacher(self) -> bool:
        return any(s.type == "teacher" for s in self.stages)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


# ---- parsing -----------------------------------------------------------------------------------------------------

def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(source, key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(source, key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(source, key, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(source, key, f"must be a string, got {value!r}")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(source, key, f"must be a table, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(source, key, f"must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"unsupported recipe field type {hint!r}")


def _build(cls: type, table: Any, source: str, where: str):
    if not isinstance(table, dict):
        raise RecipeError(source, where, f"must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"source"}
    unknown = sorted(set(table) - names)
    if unknown:
        raise RecipeError(source, f"{where}.{unknown[0]}",
                          f"unknown key; {cls.__name__} keys are: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(value, hints[name], source, f"{where}.{name}") for name, value in table.items()}
    return cls(**kwargs)


def parse_recipe(raw: dict, source: str = "<recipe>") -> Recipe:
    """Build and validate a recipe from an already-parsed TOML document."""
    raw = dict(raw)
    stages_raw = raw.pop("stages", [])
    sections = {"run": RunConfig, "data": DataConfig, "teacher": TeacherConfig, "student": StudentConfig,
                "eval": EvalConfig, "publish": PublishConfig}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise RecipeError(source, unknown[0], f"unknown table; recipe tables are: {', '.join(sorted(sections))}, stages")
    recipe = Recipe(source=source, **{k: _build(cls, raw.get(k, {}), source, k) for k, cls in sections.items()})
    if not isinstance(stages_raw, list):
        raise RecipeError(source, "stages", "must be an array of tables ([[stages]])")
    recipe.stages = [_build(StageConfig, s, source, f"stages[{i}]") for i, s in enumerate(stages_raw)]
    validate(recipe)
    return recipe


def apply_override(raw: dict, assignment: str, source: str) -> None:
    """Apply one `dotted.key=value` to a raw TOML document in place."""
    if "=" not in assignment:
        raise RecipeError(source, assignment, "an override must look like key=value")
    path, text = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    parts = path.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(source, path, f"'{part}' is not a stage index (there are {len(node)} stages)")
            node = node[int(part)]
        else:
            node = node.setdefault(part, [] if part == "stages" else {})
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(source, path, f"'{last}' is not a stage index")
        node[int(last)] = value
    else:
        node[last] = value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(source, "", "recipe file does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(source, "", f"not valid TOML: {err}") from None
    for assignment in overrides:
        apply_override(raw, assignment, source)
    return parse_recipe(raw, source)


# ---- validation --------------------------------------------------------------------------------------------------

def _check(cond: bool, recipe: Recipe, key: str, message: str) -> None:
    if not cond:
        raise RecipeError(recipe.source, key, message)


def _check_kwargs(recipe: Recipe, key: str, kwargs: dict, cls: type) -> None:
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for name in kwargs:
        _check(name in allowed, recipe, f"{key}.{name}", f"unknown {cls.__name__} argument; known: {', '.join(sorted(allowed))}")


def _check_buildable(recipe: Recipe, key: str, cls: type, kwargs: dict) -> None:
    """Build the model on the meta device (no memory, no compute) so config errors surface before training."""
    import torch

    try:
        with torch.device("meta"):
            cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise RecipeError(recipe.source, key, str(err)) from None


def validate(recipe: Recipe) -> None:
    from students.bidiffsr import BIDiffSRUNet
    from teachers import ResShiftScheduler, SR3UNet

    r, d, t = recipe.run, recipe.data, recipe.teacher
    _check(r.scale in (2, 3, 4, 8), recipe, "run.scale", f"must be 2, 3, 4 or 8, got {r.scale}")
    _check(r.mixed_precision in PRECISIONS, recipe, "run.mixed_precision", f"must be one of {PRECISIONS}, got {r.mixed_precision!r}")
    for i, tracker in enumerate(r.log_with):
        _check(tracker in TRACKERS, recipe, f"run.log_with[{i}]", f"must be one of {TRACKERS}, got {tracker!r}")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        _check(getattr(r, key) > 0, recipe, f"run.{key}", f"must be > 0, got {getattr(r, key)}")
    _check(r.resume in ("latest", "never") or Path(r.resume).is_dir(), recipe, "run.resume",
           f"must be 'latest', 'never' or an existing checkpoint folder, got {r.resume!r}")

    _check(sum(map(bool, (d.train, d.train_hub, d.builtin))) == 1, recipe, "data.train",
           "set exactly one of data.train (a folder of HR images), data.train_hub (a Hub dataset id) and "
           "data.builtin")
    _check(d.builtin in ("",) + BUILTINS, recipe, "data.builtin", f"must be one of {BUILTINS}, got {d.builtin!r}")
    if d.train:
        _check(Path(d.train).is_dir(), recipe, "data.train", f"folder {d.train} does not exist")
    if d.val:
        _check(Path(d.val).is_dir(), recipe, "data.val", f"folder {d.val} does not exist")
    if d.val_lr:
        _check(Path(d.val_lr).is_dir(), recipe, "data.val_lr", f"folder {d.val_lr} does not exist")
    _check(d.patch_size > 0 and d.patch_size % r.scale == 0, recipe, "data.patch_size",
           f"must be a positive multiple of run.scale={r.scale}, got {d.patch_size}")
    _check(d.num_workers >= 0, recipe, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    _check(d.val_max_images >= 0 and d.val_crop >= 0, recipe, "data.val_crop", "val_crop and val_max_images must be >= 0")

    _check(t.kind in TEACHER_KINDS, recipe, "teacher.kind", f"must be one of {TEACHER_KINDS}, got {t.kind!r}")
    _check(t.autocast in PRECISIONS, recipe, "teacher.autocast", f"must be one of {PRECISIONS}, got {t.autocast!r}")
    if t.path:
        _check((Path(t.path) / "model_index.json").is_file(), recipe, "teacher.path",
               f"{t.path} is not a teacher folder (no model_index.json)")
    _check_kwargs(recipe, "teacher.unet", t.unet, SR3UNet)
    _check_kwargs(recipe, "teacher.scheduler", t.scheduler, ResShiftScheduler)
    _check_kwargs(recipe, "student.unet", recipe.student.unet, BIDiffSRUNet)
    _check_buildable(recipe, "student.unet", BIDiffSRUNet, recipe.student.unet)
    if recipe.trains_teacher():
        _check_buildable(recipe, "teacher.unet", SR3UNet, t.unet)
        if t.kind == "resshift":
            _check_buildable(recipe, "teacher.scheduler", ResShiftScheduler, t.scheduler)
    if recipe.student.init:
        _check((Path(recipe.student.init) / "config.json").is_file(), recipe, "student.init",
               f"{recipe.student.init} is not a saved student folder (no config.json)")

    _check(bool(recipe.stages), recipe, "stages", "a recipe needs at least one [[stages]] entry")
    names = set()
    teacher_ready = bool(t.path)
    for i, s in enumerate(recipe.stages):
        key = f"stages[{i}]"
        _check(s.type in STAGE_TYPES, recipe, f"{key}.type", f"must be one of {STAGE_TYPES}, got {s.type!r}")
        s.name = s.name or s.type
        _check(s.name not in names, recipe, f"{key}.name", f"stage name {s.name!r} is used twice")
        names.add(s.name)
        _check(s.steps > 0, recipe, f"{key}.steps", f"must be > 0, got {s.steps}")
        _check(s.batch_size > 0, recipe, f"{key}.batch_size", f"must be > 0, got {s.batch_size}")
        _check(s.lr > 0, recipe, f"{key}.lr", f"must be > 0, got {s.lr}")
        _check(len(s.betas) == 2 and all(0 <= b < 1 for b in s.betas), recipe, f"{key}.betas",
               f"must be two numbers in [0, 1), got {s.betas}")
        _check(s.weight_decay >= 0, recipe, f"{key}.weight_decay", f"must be >= 0, got {s.weight_decay}")
        _check(s.lr_schedule in LR_SCHEDULES, recipe, f"{key}.lr_schedule", f"must be one of {LR_SCHEDULES}, got {s.lr_schedule!r}")
        _check(0 <= s.warmup_steps <= s.steps, recipe, f"{key}.warmup_steps", f"must be in [0, steps], got {s.warmup_steps}")
        _check(s.grad_accum >= 1, recipe, f"{key}.grad_accum", f"must be >= 1, got {s.grad_accum}")
        _check(s.max_grad_norm >= 0, recipe, f"{key}.max_grad_norm", f"must be >= 0, got {s.max_grad_norm}")
        _check(0 <= s.ema_decay < 1, recipe, f"{key}.ema_decay", f"must be in [0, 1), got {s.ema_decay}")
        patch = s.patch_size or d.patch_size
        _check(patch % r.scale == 0, recipe, f"{key}.patch_size", f"must be a multiple of run.scale={r.scale}, got {patch}")
        _check(s.spd_weight >= 0 and s.output_weight >= 0, recipe, f"{key}.spd_weight", "loss weights must be >= 0")
        _check(s.spd_patches >= 1, recipe, f"{key}.spd_patches", f"must be >= 1, got {s.spd_patches}")
        _check(s.teacher_steps >= 1, recipe, f"{key}.teacher_steps", f"must be >= 1, got {s.teacher_steps}")
        if s.type == "teacher":
            _check(not t.path, recipe, f"{key}.type", "a teacher stage trains a new teacher; remove teacher.path")
            teacher_ready = True
        if s.type in ("feature_distill", "one_step"):
            _check(teacher_ready, recipe, f"{key}.type",
                   f"a {s.type} stage needs a teacher: set teacher.path or train one in an earlier 'teacher' stage")
            _check(t.kind == "sr3", recipe, f"{key}.type",
                   f"{s.type} distils from an SR3 teacher (its features / its DDIM targets); teacher.kind must be 'sr3'")
    _check(recipe.eval.num_inference_steps >= 1, recipe, "eval.num_inference_steps", "must be >= 1")
    if recipe.eval.lpips_backbone:
        _check(Path(recipe.eval.lpips_backbone).is_file(), recipe, "eval.lpips_backbone",
               f"file {recipe.eval.lpips_backbone} does not exist")
    if recipe.publish.push_to_hub:
        _check(recipe.publish.push_to_hub.count("/") == 1, recipe, "publish.push_to_hub",
               f"must look like 'owner/name', got {recipe.publish.push_to_hub!r}")
