"""Typed recipes: a TOML file parsed into dataclasses, every key checked.

A recipe has the tables [run], [data], [process], [teacher], [student], [eval], [publish] and an ordered array
[[stages]]. [process] is `type` ("ddpm": BI-DiffSR's, the default; "resshift") plus that process's settings
(`teachers.ddpm.DDPMProcess`, `teachers.resshift.ResShiftProcess`); teacher and student live on it.
An unknown or mistyped key, a missing required key, a missing file or an impossible value raises `RecipeError`
naming the recipe file and the key (e.g. `recipes/x.toml: stages[1].lr: must be > 0, got -1.0`).
`--set key=value` overrides use the same dotted paths (`stages.0.steps=10`, `run.output_dir="out"`), with the
value read as a TOML literal (bare words are strings).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math
import os
import re
import tomllib
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.builtin_data import BUILTINS

STAGE_TYPES = ("teacher", "direct", "feature_distill", "one_step")
PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
TRACKERS = ("tensorboard", "wandb")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # names that make paths: run.name, stage names


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


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
    mixed_precision: str = ""  # "" = the launcher's (accelerate launch --mixed_precision, accelerate config)
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
    num_proc: int = 0  # processes that build the LR cache (datasets' map); 0: min(8, CPU count)
    val: str = ""  # a folder of HR images (Set5 layout)
    val_lr: str = ""  # optional folder of pre-made LR images named <stem>x<scale>.png; else made from HR
    val_max_images: int = 0  # 0: all
    val_crop: int = 0  # 0: full images; N: centre crop N x N HR (fast smoke evaluations)
    val_lr_only: bool = False  # data.val holds real LR images without HR: samples and the grid, no reference metrics
    degradation: str = "bicubic"  # how LR images are made: "bicubic" (MATLAB) or "realesrgan" (second-order, on device)
    degradation_options: str = ""  # realesrgan: a release option YAML to read the settings from (else the release's)


@dataclass
class ProcessConfig:
    type: str = ""  # "ddpm" or "resshift"; "" = the loaded teacher's process, else "ddpm"
    options: dict = field(default_factory=dict)  # the process's settings (the other keys of [process])


@dataclass
class TeacherConfig:
    path: str = ""  # a trained teacher folder; required unless a `teacher` stage trains one
    kind: str = "twin"  # the teacher a `teacher` stage builds: "twin" (the student's FP twin) or "sr3"
    unet: dict = field(default_factory=dict)  # SR3UNet arguments (kind = "sr3"); a twin copies student.unet
    autocast: str = "no"  # "bf16"/"fp16": run the frozen teacher under autocast


@dataclass
class StudentConfig:
    init: str = ""  # start from a saved student folder instead of random weights (a saved full-precision twin,
    # binarizer "none", starts a binarized student as init_from_teacher does: BiMaCoSR's branches split off its weights)
    init_from_teacher: bool = False  # start from the (twin) teacher's weights, as BiDM; needed for aligned SPD
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
    output_weight: float = 0.0  # the process loss between student and teacher outputs
    direct_weight: float = 1.0  # the process loss to the data's target; 0: the teacher's output is the only target
    features: list[str] = field(default_factory=list)  # [] = every res-block feature both models tap
    # one_step
    teacher_steps: int = 0  # the teacher sampler's steps for the targets; 0 = its process's default
    xt_weight: float = 0.0  # SinSR's learn_xT term: the student maps the teacher's output back to x_T (SinSR: 1)
    gt_weight: float = 0.0  # SinSR's finetune_use_gt term: the HR image through the student's inverse and back (1)


@dataclass
class EvalConfig:
    enabled: bool = True
    num_inference_steps: int = 0  # 0: the process default (DDPM 50 DDIM steps, ResShift all its steps)
    seed: int = 10
    lpips: bool = True
    lpips_backbone: str = ""
    teacher: bool = True  # add the teacher's row
    grid_images: int = 4
    tile_size: int = 0  # models sample in overlapping tiles of this HR size (bounded memory on large images); 0: the
    # process's official chopping where it has one (latent ResShift: 512 LR pixels), else 512


@dataclass
class PublishConfig:
    push_to_hub: str = ""  # "owner/name"
    private: bool = False


@dataclass
class Recipe:
    source: str = "<recipe>"
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
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
        if not math.isfinite(value):
            raise RecipeError(source, key, f"must be a finite number, got {value!r}")
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


def parse_recipe(raw: dict, source: str = "<recipe>", check: bool = True) -> Recipe:
    """Build and (with `check`) validate a recipe from an already-parsed TOML document; without `check`, only the
    keys and types (what printing it needs)."""
    raw = dict(raw)
    stages_raw = raw.pop("stages", [])
    process_raw = raw.pop("process", {})
    sections = {"run": RunConfig, "data": DataConfig, "teacher": TeacherConfig, "student": StudentConfig,
                "eval": EvalConfig, "publish": PublishConfig}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise RecipeError(source, unknown[0],
                          f"unknown table; recipe tables are: {', '.join(sorted(sections))}, process, stages")
    recipe = Recipe(source=source, **{k: _build(cls, raw.get(k, {}), source, k) for k, cls in sections.items()})
    if not isinstance(process_raw, dict):
        raise RecipeError(source, "process", f"must be a table, got {process_raw!r}")
    options = dict(process_raw)
    recipe.process = ProcessConfig(type=_coerce(options.pop("type", ""), str, source, "process.type"), options=options)
    if not isinstance(stages_raw, list):
        raise RecipeError(source, "stages", "must be an array of tables ([[stages]])")
    recipe.stages = [_build(StageConfig, s, source, f"stages[{i}]") for i, s in enumerate(stages_raw)]
    for stage in recipe.stages:  # resolved here, so that validation only reads the recipe
        stage.name = stage.name or stage.type
    if check:
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
        if not isinstance(node, (dict, list)):
            raise RecipeError(source, path, f"'{'.'.join(parts[:i + 1])}' is a value ({node!r}), not a table: "
                                            "nothing inside it can be set")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(source, path, f"'{last}' is not a stage index")
        node[int(last)] = value
    else:
        node[last] = value


def load_recipe(path: str | Path, overrides: list[str] = (), check: bool = True) -> Recipe:
    """Read, override and (with `check`) validate a recipe file."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(source, "", "recipe file does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(source, "", f"not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(source, "", f"not UTF-8 text (byte {err.start}): TOML files are UTF-8") from None
    except OSError as err:
        raise RecipeError(source, "", f"cannot read the recipe: {err.strerror}") from None
    for assignment in overrides:
        apply_override(raw, assignment, source)
    return parse_recipe(raw, source, check)


# ---- validation --------------------------------------------------------------------------------------------------

def _check(cond: bool, recipe: Recipe, key: str, message: str) -> None:
    if not cond:
        raise RecipeError(recipe.source, key, message)


def _check_kwargs(recipe: Recipe, key: str, kwargs: dict, cls: type) -> None:
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for name in kwargs:
        _check(name in allowed, recipe, f"{key}.{name}", f"unknown {cls.__name__} argument; known: {', '.join(sorted(allowed))}")


def _check_buildable(recipe: Recipe, key: str, cls: type, kwargs: dict):
    """Build the model on the meta device (no memory, no compute) so config errors surface before training."""
    import torch

    try:
        with torch.device("meta"):
            return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise RecipeError(recipe.source, key, str(err)) from None


# Process settings that define the diffusion itself; teacher and student must agree on them.
# How each model is called and sampled may differ (a teacher converts its own time input: `Teacher.predict`).
_SCHEDULE_KEYS_IGNORED = {"clip_sample", "num_inference_steps", "one_step", "time_input", "sampler"}


def build_recipe_process(recipe: Recipe):
    """The process teacher and student live on: [process], or a loaded teacher's own when [process] sets no type.
    A teacher on another process (or another schedule) is a RecipeError naming the key."""
    from teachers.process import PROCESSES, build_process, load_process

    p, t = recipe.process, recipe.teacher
    teacher_process = None
    if t.path:
        try:
            teacher_process = load_process(Path(t.path) / "scheduler")
        except (OSError, ValueError) as err:
            raise RecipeError(recipe.source, "teacher.path", f"cannot read the teacher's process: {err}") from None
    if not p.type and teacher_process is not None:
        _check(not p.options, recipe, "process.type",
               "set process.type when giving process settings (or leave [process] out to use the teacher's)")
        return teacher_process.for_student()
    _check((p.type or "ddpm") in PROCESSES, recipe, "process.type",
           f"must be one of {tuple(sorted(PROCESSES))}, got {p.type!r}")
    cls = PROCESSES[p.type or "ddpm"]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "one_step"}
    for name in p.options:
        _check(name in allowed, recipe, f"process.{name}",
               f"unknown {cls.__name__} setting; known: {', '.join(sorted(allowed))}")
    try:
        process = build_process(p.type or "ddpm", **p.options)
    except (ValueError, TypeError) as err:
        raise RecipeError(recipe.source, "process", str(err)) from None
    if teacher_process is not None:
        _check(type(teacher_process) is type(process), recipe, "process.type",
               f"the teacher in {t.path} lives on the {teacher_process.name!r} process, not {process.name!r}; a "
               "student learns from a teacher on its own process (leave [process] out to use the teacher's)")
        for key, value in teacher_process.config.items():
            if key.startswith("_") or key in _SCHEDULE_KEYS_IGNORED:
                continue
            _check(process.config[key] == value, recipe, f"process.{key}",
                   f"is {process.config[key]!r} but the teacher in {t.path} was trained with {value!r}")
        process.share_space(teacher_process)  # a latent process takes the teacher's autoencoder
    try:
        process.check_ready()
    except ValueError as err:
        raise RecipeError(recipe.source, "process.type", f"{err}; set teacher.path to such a teacher") from None
    _check(process.for_student() is process or all(s.type == "teacher" for s in recipe.stages), recipe,
           "process.time_input", "a BI-DiffSR student is given timesteps (its TaR/TaA groups index them); leave "
           "time_input at 'index' (a loaded teacher that takes noise levels converts for itself)")
    return process


def student_unet_config(recipe: Recipe, process) -> dict:
    """student.unet with num_train_timesteps taken from the process (TaR/TaA groups span the process's steps) and
    timestep_groups at most that many."""
    config = dict(recipe.student.unet)
    steps = config.setdefault("num_train_timesteps", process.num_train_timesteps)
    config.setdefault("timestep_groups", min(5, steps))  # the paper's K = 5, or one group per step of a shorter chain
    _check(steps == process.num_train_timesteps, recipe, "student.unet.num_train_timesteps",
           f"is {steps} but the process has {process.num_train_timesteps} steps (leave it out to follow the process)")
    return config


def _teacher_unet_config(recipe: Recipe) -> tuple[str, dict] | None:
    """(class name, config) of the teacher's denoiser, from teacher.path, or None when a stage builds it."""
    if not recipe.teacher.path:
        return None
    file = Path(recipe.teacher.path) / "unet" / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(recipe.source, "teacher.path", f"cannot read the teacher's denoiser config {file}: {err}") from None
    return config.get("_class_name", ""), config


def _check_alignment(recipe: Recipe, key: str, student, what: str) -> None:
    """SPD and starting from the teacher need the student's full-precision twin as the teacher."""
    from students.bidiffsr import BIDiffSRUNet, layout_difference

    loaded = _teacher_unet_config(recipe)
    if loaded is None:
        _check(recipe.teacher.kind == "twin", recipe, key,
               f"{what} needs a teacher whose features correspond to the student's channel for channel: the "
               f"student's full-precision twin. teacher.kind is {recipe.teacher.kind!r}; set teacher.kind = "
               "'twin' (an SR3 or other unrelated teacher still works for output_weight and one_step)")
        return
    name, config = loaded
    why = ""
    if name != BIDiffSRUNet.__name__:
        why = f"its denoiser is a {name or 'unknown model'}, not the student's BIDiffSRUNet"
    elif difference := layout_difference(student.config, config):
        field, mine, theirs = difference
        why = f"its {field} is {theirs!r} but student.unet.{field} is {mine!r}"
    _check(not why, recipe, key, f"{what} needs the student's full-precision twin as the teacher, but in "
           f"{recipe.teacher.path} {why}. Train a twin with a 'teacher' stage (teacher.kind = 'twin') or drop it "
           "(output_weight and one_step work with any teacher on the same process)")


def _check_hub_dataset(recipe: Recipe) -> None:
    """Before training: the Hub dataset exists, or, without a connection, has been downloaded before (otherwise
    datasets retries for a while and ends in a traceback)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    repo = recipe.data.train_hub
    try:
        HfApi().dataset_info(repo, timeout=10)
        return
    except RepositoryNotFoundError:
        raise RecipeError(recipe.source, "data.train_hub", f"there is no dataset {repo!r} on the Hub (a private one "
                          "needs `hf auth login`)") from None
    except Exception as err:  # offline mode, no network, a proxy error: fall back to what is cached
        why = f"{type(err).__name__}"
    cached = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}"
    _check(cached.is_dir(), recipe, "data.train_hub",
           f"cannot reach the Hub for {repo!r} ({why}) and it is not in the local cache ({cached}); connect once to "
           "download it (it is then reused offline; set HF_HUB_OFFLINE=1), or point data.train at a folder of images")


def _check_validation_folder(recipe: Recipe) -> None:
    """Before training: the validation folder has images, and every one is at least data.val_crop on each side."""
    from PIL import Image

    from pipeline.data import UNREADABLE, image_files
    from pipeline.degradations import MIN_PATCH
    from pipeline.metrics import SSIM_WINDOW

    d = recipe.data
    files = image_files(d.val)
    _check(bool(files), recipe, "data.val", f"folder {d.val} holds no images")
    if d.val_max_images:
        files = files[: d.val_max_images]
    for f in files:
        try:
            with Image.open(f) as im:
                w, h = im.size
        except UNREADABLE as err:
            raise RecipeError(recipe.source, "data.val", f"cannot read validation image {f}: {err}") from None
        _check(min(w, h) >= d.val_crop, recipe, "data.val_crop",
               f"is {d.val_crop} but validation image {f} is only {w}x{h}")
        side = d.val_crop or min(w, h)
        need = SSIM_WINDOW + 2 * recipe.run.scale
        _check(d.val_lr_only or side >= need, recipe, "data.val_crop" if d.val_crop else "data.val",
               f"validation images must be at least {need} pixels a side (SSIM's 11x11 window inside the "
               f"{recipe.run.scale}-pixel border), but {f} gives {side}")
        _check(d.degradation != "realesrgan" or d.val_lr_only or min(w, h) >= MIN_PATCH, recipe, "data.val",
               f"validation image {f} is {w}x{h}: realesrgan degradations need at least {MIN_PATCH} pixels a side")


def _check_training_folder(recipe: Recipe) -> None:
    """Before training: data.train holds images (searched in subfolders too, as datasets' imagefolder does), some
    of them readable and at least as large as the largest training patch on both sides."""
    from PIL import Image

    from pipeline.data import IMAGE_SUFFIXES, UNREADABLE, DataError, training_image_files

    d, r = recipe.data, recipe.run
    try:
        files = training_image_files(d.train)
    except DataError as err:
        raise RecipeError(recipe.source, "data.train", str(err)) from None
    _check(bool(files), recipe, "data.train",
           f"folder {d.train} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, in subfolders too)")
    sides = []
    for f in files:
        try:
            with Image.open(f) as im:
                sides.append(min(im.size) - min(im.size) % r.scale)
        except UNREADABLE:
            continue  # reported and skipped when the data is prepared
    _check(bool(sides), recipe, "data.train", f"none of the {len(files)} images in {d.train} can be read "
           f"(the first is {files[0]})")
    patch, key = max((s.patch_size or d.patch_size, f"stages[{i}].patch_size" if s.patch_size else "data.patch_size")
                     for i, s in enumerate(recipe.stages))
    _check(max(sides) >= patch, recipe, key, f"is {patch} but no training image in {d.train} is that large on both "
           f"sides (the largest allows {max(sides)}px at x{r.scale})")


def _check_student_init(recipe: Recipe, student) -> None:
    """student.init before training: an intact saved student with readable, finite weights whose layout and
    timesteps are the recipe's student's (the same binarizer, or its full-precision twin, binarizer "none", which the
    binarized student then starts from)."""
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import load_file

    from students.bidiffsr import layout_difference
    from students.checksums import CHECKSUMS, damage
    from students.finite import name_tensors, nonfinite_tensors

    folder = Path(recipe.student.init)
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(recipe.source, "student.init", f"cannot read {folder}/config.json: {err}") from None
    why = damage(folder) if (folder / CHECKSUMS).is_file() else ""
    _check(not why, recipe, "student.init", f"{folder} is damaged: {why}")
    weights = folder / SAFETENSORS_WEIGHTS_NAME
    try:
        bad = nonfinite_tensors(load_file(weights))
    except Exception as err:  # missing, truncated or not a safetensors file
        raise RecipeError(recipe.source, "student.init", f"cannot read {weights}: {err}") from None
    _check(not bad, recipe, "student.init", f"{weights} holds NaN or infinite weights ({name_tensors(bad)})")
    twin = saved.get("binarizer") == "none" and student.config.binarizer != "none"
    difference = layout_difference(student.config, saved)
    keys = ("num_train_timesteps",) if twin else ("num_train_timesteps", "binarizer", "timestep_groups")
    mismatch = next(((k, student.config[k], saved.get(k)) for k in keys if saved.get(k) != student.config[k]), None)
    problem = difference or mismatch
    if problem:
        key, mine, theirs = problem
        raise RecipeError(recipe.source, "student.init", f"{folder} is a student with {key} = {theirs!r}, but this "
                                                         f"recipe's student has {mine!r} (student.unet and the "
                                                         "process decide it)")


class RecipeWarning(UserWarning):
    """A recipe that runs but is probably not what was meant (it can be deliberate)."""


def _warn_degradation_mismatch(recipe: Recipe) -> None:
    """A teacher trained on one LR model distilled on data made by another learns targets for inputs it never saw."""
    try:
        trained_on = json.loads((Path(recipe.teacher.path) / "model_index.json").read_text()).get("degradation",
                                                                                                 "bicubic")
    except (OSError, json.JSONDecodeError, AttributeError):
        return  # the teacher's loader names what is wrong with the folder
    if trained_on != recipe.data.degradation:
        warnings.warn(f"{recipe.source}: data.degradation = {recipe.data.degradation!r}, but the teacher "
                      f"({recipe.teacher.path}) was trained on {trained_on!r} LR images: the student learns the "
                      f"teacher's answers to inputs the teacher never saw (set data.degradation = {trained_on!r} "
                      "unless this is meant)", RecipeWarning, stacklevel=2)


def validate(recipe: Recipe) -> None:
    """Check every value of the recipe and what it refers to (files, the Hub, the models it would build), raising a
    RecipeError naming the key at fault; it never changes the recipe."""
    from pipeline.degradations import DEGRADATIONS, MIN_PATCH, DegradationError, build_degradation
    from pipeline.importers import CheckpointError
    from students.bidiffsr import BIDiffSRUNet
    from students.binarizers import get_binarizer
    from teachers import TEACHER_KINDS, SR3UNet

    r, d, t = recipe.run, recipe.data, recipe.teacher
    _check(r.scale in (2, 3, 4, 8), recipe, "run.scale", f"must be 2, 3, 4 or 8, got {r.scale}")
    _check(r.mixed_precision in ("",) + PRECISIONS, recipe, "run.mixed_precision",
           f"must be one of {PRECISIONS} (or left out to follow the launcher), got {r.mixed_precision!r}")
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "")
    _check(not (r.mixed_precision and launcher and launcher != r.mixed_precision), recipe, "run.mixed_precision",
           f"is {r.mixed_precision!r} but the launcher asks for {launcher!r} (accelerate launch --mixed_precision or "
           "accelerate config): change one of them, or leave run.mixed_precision out to follow the launcher")
    for i, tracker in enumerate(r.log_with):
        _check(tracker in TRACKERS, recipe, f"run.log_with[{i}]", f"must be one of {TRACKERS}, got {tracker!r}")
        _check(importlib.util.find_spec(tracker) is not None, recipe, f"run.log_with[{i}]",  # named as its package
               f"{tracker!r} needs the {tracker} package, which is not installed (pip install {tracker}), or drop it")
    _check(_NAME.fullmatch(r.name) is not None, recipe, "run.name",
           f"must be 1-100 letters, digits, '_', '-' or '.' (not starting with '.'), got {r.name!r}: it names "
           "folders and logs")
    _check(0 <= r.seed < 2**32, recipe, "run.seed", f"must be in [0, 2^32 - 1], got {r.seed}")
    _check(r.mixed_precision != "fp16" or _has_gpu(), recipe, "run.mixed_precision",
           "'fp16' needs a GPU (this machine has none); use 'bf16' or 'no' on a CPU")
    if d.train:
        inside = Path(r.output_dir).resolve().is_relative_to(Path(d.train).resolve())
        _check(not inside, recipe, "run.output_dir", f"{r.output_dir} is inside data.train ({d.train}): its "
               "evaluation images would become training data; choose a folder outside it")
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
    _check(d.degradation in DEGRADATIONS, recipe, "data.degradation",
           f"must be one of {DEGRADATIONS}, got {d.degradation!r}")
    _check(not d.val_lr_only or (d.val and not d.val_lr and not d.val_crop), recipe, "data.val_lr_only",
           "needs data.val (a folder of LR images) and neither data.val_lr nor data.val_crop")
    _check(not (d.val_lr and d.degradation == "realesrgan"), recipe, "data.val_lr",
           "holds pre-made (bicubic) LR images; with realesrgan degradations the validation LR images are degraded "
           "copies of data.val made with fixed seeds: remove data.val_lr")
    _check(not d.degradation_options or d.degradation == "realesrgan", recipe, "data.degradation_options",
           "only applies to data.degradation = \"realesrgan\"")
    _check(d.degradation != "realesrgan" or d.val_crop == 0 or d.val_crop >= MIN_PATCH, recipe, "data.val_crop",
           f"must be 0 or at least {MIN_PATCH} with realesrgan degradations, got {d.val_crop}")
    try:
        build_degradation(recipe)
    except (DegradationError, CheckpointError) as err:
        raise RecipeError(recipe.source, "data.degradation_options", str(err)) from None

    _check(t.kind in TEACHER_KINDS, recipe, "teacher.kind", f"must be one of {TEACHER_KINDS}, got {t.kind!r}")
    _check(t.autocast in PRECISIONS, recipe, "teacher.autocast", f"must be one of {PRECISIONS}, got {t.autocast!r}")
    if t.path:
        _check((Path(t.path) / "model_index.json").is_file(), recipe, "teacher.path",
               f"{t.path} is not a teacher folder (no model_index.json)")
        _warn_degradation_mismatch(recipe)
    process = build_recipe_process(recipe)
    student_config = student_unet_config(recipe, process)
    _check_kwargs(recipe, "student.unet", recipe.student.unet, BIDiffSRUNet)
    student = _check_buildable(recipe, "student.unet", BIDiffSRUNet, student_config)
    pixels_per_position = student.size_multiple * process.spatial_factor
    if recipe.trains_teacher():
        if t.kind == "sr3":
            _check_kwargs(recipe, "teacher.unet", t.unet, SR3UNet)
            _check_buildable(recipe, "teacher.unet", SR3UNet, t.unet)
        else:
            _check(not t.unet, recipe, "teacher.unet",
                   "a twin teacher copies student.unet (set the widths there); leave teacher.unet empty")
    if recipe.student.init:
        _check((Path(recipe.student.init) / "config.json").is_file(), recipe, "student.init",
               f"{recipe.student.init} is not a saved student folder (no config.json)")
        _check_student_init(recipe, student)
    if recipe.student.init_from_teacher:
        _check(not recipe.student.init, recipe, "student.init_from_teacher",
               "choose one of student.init (a saved student) and student.init_from_teacher")
        first_student = next((i for i, s in enumerate(recipe.stages) if s.type != "teacher"), len(recipe.stages))
        _check(bool(t.path) or any(s.type == "teacher" for s in recipe.stages[:first_student]), recipe,
               "student.init_from_teacher", "needs a teacher before the first student stage: set teacher.path or "
               "put a 'teacher' stage first")
        _check_alignment(recipe, "student.init_from_teacher", student, "starting the student from the teacher")

    binarizer = get_binarizer(student.config.binarizer)
    if binarizer.needs_full_precision_init:
        _check(recipe.student.init_from_teacher or bool(recipe.student.init), recipe, "student.unet.binarizer",
               f"{binarizer.name!r} splits full-precision weights into its branches when it starts, so the student "
               "must start from its full-precision twin (student.init_from_teacher = true with a twin teacher) or from "
               "a saved student (student.init)")
    _check(not (student.config.cross_timestep_blocks and any(s.type == "one_step" for s in recipe.stages)), recipe,
           "student.unet.cross_timestep_blocks", "a one-step student has no previous sampling step to mix in; set it "
           "to 0 for a recipe with a one_step stage")
    _check(bool(recipe.stages), recipe, "stages", "a recipe needs at least one [[stages]] entry")
    names = set()
    teacher_ready = bool(t.path)
    for i, s in enumerate(recipe.stages):
        key = f"stages[{i}]"
        _check(s.type in STAGE_TYPES, recipe, f"{key}.type", f"must be one of {STAGE_TYPES}, got {s.type!r}")
        _check(_NAME.fullmatch(s.name) is not None, recipe, f"{key}.name",
               f"must be 1-100 letters, digits, '_', '-' or '.' (not starting with '.'), got {s.name!r}: it names "
               "folders")
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
        _check(d.degradation != "realesrgan" or patch >= MIN_PATCH, recipe, f"{key}.patch_size",
               f"must be at least {MIN_PATCH} with realesrgan degradations (the blurs must fit the shrunk patch), "
               f"got {patch}")
        _check(patch % pixels_per_position == 0, recipe, f"{key}.patch_size",
               f"must be a multiple of {pixels_per_position} (the student's size multiple x the process's "
               f"{process.spatial_factor}-pixel latent cell), got {patch}")
        _check(s.spd_weight >= 0 and s.output_weight >= 0, recipe, f"{key}.spd_weight", "loss weights must be >= 0")
        _check(s.direct_weight >= 0, recipe, f"{key}.direct_weight", f"must be >= 0, got {s.direct_weight}")
        if s.type == "feature_distill":
            _check(s.direct_weight + s.output_weight + s.spd_weight > 0, recipe, f"{key}.direct_weight",
                   "direct_weight, output_weight and spd_weight are all 0: the stage would have no loss")
        _check(s.spd_patches >= 1, recipe, f"{key}.spd_patches", f"must be >= 1, got {s.spd_patches}")
        _check(s.teacher_steps >= 0, recipe, f"{key}.teacher_steps", f"must be >= 0 (0: the process default), got {s.teacher_steps}")
        for name in ("xt_weight", "gt_weight"):
            _check(getattr(s, name) >= 0, recipe, f"{key}.{name}", f"must be >= 0, got {getattr(s, name)}")
            _check(s.type == "one_step" or getattr(s, name) == 0, recipe, f"{key}.{name}",
                   "is a one_step setting (SinSR's terms)")
        if s.type == "teacher":
            _check(not t.path, recipe, f"{key}.type", "a teacher stage trains a new teacher; remove teacher.path")
            teacher_ready = True
        if s.type in ("feature_distill", "one_step"):
            _check(teacher_ready, recipe, f"{key}.type",
                   f"a {s.type} stage needs a teacher: set teacher.path or train one in an earlier 'teacher' stage")
        if s.type == "feature_distill" and s.spd_weight > 0:
            _check_alignment(recipe, f"{key}.spd_weight", student, "Space Patched Distillation (spd_weight > 0)")
            _check(recipe.student.init_from_teacher or bool(recipe.student.init), recipe, "student.init_from_teacher",
                   f"stages[{i}] uses SPD, whose channel-wise Gram matrices only carry signal when the student starts "
                   "from the teacher's weights (BiDM); set student.init_from_teacher = true")
            known = student.feature_names() if s.features else []
            for name in s.features:
                _check(name in known, recipe, f"{key}.features",
                       f"{name!r} is not a res-block feature of the student; it has {', '.join(sorted(known))}")
            grid = s.spd_patches * pixels_per_position
            _check(patch % grid == 0, recipe, f"{key}.patch_size",
                   f"SPD splits every feature map into a {s.spd_patches}x{s.spd_patches} grid, so the patch size must "
                   f"be a multiple of {grid} (spd_patches x 2^(levels - 1)); got {patch}")
        if s.type == "one_step" and s.teacher_steps:
            try:
                process.inference_timesteps(s.teacher_steps)
            except ValueError as err:
                raise RecipeError(recipe.source, f"{key}.teacher_steps", str(err)) from None
    _check(recipe.eval.num_inference_steps >= 0, recipe, "eval.num_inference_steps", "must be >= 0 (0: the process's default)")
    if recipe.eval.num_inference_steps:
        try:
            process.inference_timesteps(recipe.eval.num_inference_steps)
        except ValueError as err:
            raise RecipeError(recipe.source, "eval.num_inference_steps", str(err)) from None
    _check(recipe.eval.grid_images >= 0, recipe, "eval.grid_images", f"must be >= 0, got {recipe.eval.grid_images}")
    _check(recipe.eval.tile_size == 0 or (recipe.eval.tile_size >= 64 and recipe.eval.tile_size % pixels_per_position
                                          == 0), recipe, "eval.tile_size",
           f"must be 0 (the process's default) or >= 64 and a multiple of {pixels_per_position} (the student's size "
           f"multiple in pixels), got {recipe.eval.tile_size}")
    _check(d.num_proc >= 0, recipe, "data.num_proc", f"must be >= 0 (0: min(8, CPU count)), got {d.num_proc}")
    if d.train:
        _check_training_folder(recipe)
    if d.train_hub:
        _check_hub_dataset(recipe)
    if d.val and recipe.eval.enabled:
        _check_validation_folder(recipe)
    if recipe.eval.lpips_backbone:
        _check(Path(recipe.eval.lpips_backbone).is_file(), recipe, "eval.lpips_backbone",
               f"file {recipe.eval.lpips_backbone} does not exist")
    if recipe.publish.push_to_hub:
        _check(recipe.publish.push_to_hub.count("/") == 1, recipe, "publish.push_to_hub",
               f"must look like 'owner/name', got {recipe.publish.push_to_hub!r}")
        from huggingface_hub import get_token

        _check(bool(get_token()), recipe, "publish.push_to_hub", "no Hugging Face credentials to push with: run `hf "
               "auth login` or set HF_TOKEN before training, or leave publish.push_to_hub out (push later with "
               "`bidistill push`)")
