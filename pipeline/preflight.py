"""Pre-flight: before anything trains, check what a parsed recipe refers to (files, the Hub, installed trackers, the
process and models it builds, teacher/student compatibility) and hand the trainer what was built.

Every problem is a RecipeError naming the recipe file and the key at fault; the recipe is never changed.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import RepositoryNotFoundError
from PIL import Image
from safetensors.torch import load_file

from pipeline.image_files import IMAGE_SUFFIXES, UNREADABLE, DataError, image_files, training_image_files
from pipeline.degradations import MIN_PATCH, DegradationError, build_degradation
from pipeline.importers import CheckpointError
from pipeline.metrics import SSIM_WINDOW
from pipeline.recipe import Recipe, load_recipe
from pipeline.settings import SettingError, named_in, require
from pipeline.stages import StageSetup
from students.bidiffsr import CLASS_NAMES as UNET_CLASS_NAMES
from students.bidiffsr import BiDiffSRUNet, layout_difference
from students.binarizers import get_binarizer
from students.checksums import CHECKSUMS, damage
from students.finite import name_tensors, nonfinite_tensors
from teachers import SR3UNet
from teachers.process import PROCESSES, DiffusionProcess, build_process, load_process


@dataclass
class CheckedRecipe:
    """What the pre-flight check built, for the trainer: the process teacher and student live on, the student's
    denoiser settings and the LR degradation (None: the data's bicubic LR)."""

    recipe: Recipe
    process: DiffusionProcess
    student_config: dict
    degradation: object | None


def build_recipe_process(recipe: Recipe) -> DiffusionProcess:
    """The process teacher and student live on: [process], or a loaded teacher's own when [process] sets no type."""
    with named_in(recipe.source):
        return _build_recipe_process(recipe)


def student_unet_config(recipe: Recipe, process: DiffusionProcess) -> dict:
    """student.unet completed from the process (see `_student_unet_config`)."""
    with named_in(recipe.source):
        return _student_unet_config(recipe, process)


def _check_kwargs(key: str, kwargs: dict, cls: type) -> None:
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for name in kwargs:
        require(name in allowed, f"{key}.{name}",
                f"unknown {cls.__name__} argument; known: {', '.join(sorted(allowed))}")


def _check_buildable(key: str, cls: type, kwargs: dict):
    """Build the model on the meta device (no memory, no compute) so config errors surface before training."""
    try:
        with torch.device("meta"):
            return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise SettingError(key, str(err)) from None


# Process settings that define the diffusion itself; teacher and student must agree on them.
# How each model is called and sampled may differ (a teacher converts its own time input: `Teacher.predict`).
_SCHEDULE_KEYS_IGNORED = {"clip_sample", "num_inference_steps", "one_step", "time_input", "sampler"}


def _build_recipe_process(recipe: Recipe) -> DiffusionProcess:
    """The process teacher and student live on: [process], or a loaded teacher's own when [process] sets no type.
    A teacher on another process (or another schedule) is a SettingError naming the key."""
    p, t = recipe.process, recipe.teacher
    teacher_process = None
    if t.path:
        try:
            teacher_process = load_process(Path(t.path) / "scheduler")
        except (OSError, ValueError) as err:
            raise SettingError("teacher.path", f"cannot read the teacher's process: {err}") from None
    if not p.type and teacher_process is not None:
        require(not p.options, "process.type",
                "set process.type when giving process settings (or leave [process] out to use the teacher's)")
        return teacher_process.for_student()
    require((p.type or "ddpm") in PROCESSES, "process.type",
            f"must be one of {tuple(sorted(PROCESSES))}, got {p.type!r}")
    cls = PROCESSES[p.type or "ddpm"]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "one_step"}
    for name in p.options:
        require(name in allowed, f"process.{name}",
                f"unknown {cls.__name__} setting; known: {', '.join(sorted(allowed))}")
    try:
        process = build_process(p.type or "ddpm", **p.options)
    except (ValueError, TypeError) as err:
        raise SettingError("process", str(err)) from None
    if teacher_process is not None:
        require(type(teacher_process) is type(process), "process.type",
                f"the teacher in {t.path} lives on the {teacher_process.name!r} process, not {process.name!r}; a "
                "student learns from a teacher on its own process (leave [process] out to use the teacher's)")
        for key, value in teacher_process.config.items():
            if key.startswith("_") or key in _SCHEDULE_KEYS_IGNORED:
                continue
            require(process.config[key] == value, f"process.{key}",
                    f"is {process.config[key]!r} but the teacher in {t.path} was trained with {value!r}")
        process.share_space(teacher_process)  # a latent process takes the teacher's autoencoder
    try:
        process.check_ready()
    except ValueError as err:
        raise SettingError("process.type", f"{err}; set teacher.path to such a teacher") from None
    require(process.for_student() is process or all(s.trains_teacher for s in recipe.stages),
            "process.time_input", "a BI-DiffSR student is given timesteps (its TaR/TaA groups index them); leave "
            "time_input at 'index' (a loaded teacher that takes noise levels converts for itself)")
    return process


def _student_unet_config(recipe: Recipe, process: DiffusionProcess) -> dict:
    """student.unet with num_train_timesteps taken from the process (TaR/TaA groups span the process's steps) and
    timestep_groups at most that many."""
    config = dict(recipe.student.unet)
    steps = config.setdefault("num_train_timesteps", process.num_train_timesteps)
    config.setdefault("timestep_groups", min(5, steps))  # the paper's K = 5, or one group per step of a shorter chain
    require(steps == process.num_train_timesteps, "student.unet.num_train_timesteps",
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
        raise SettingError("teacher.path", f"cannot read the teacher's denoiser config {file}: {err}") from None
    return config.get("_class_name", ""), config


def _check_alignment(recipe: Recipe, key: str, student, what: str) -> None:
    """SPD and starting from the teacher need the student's full-precision twin as the teacher."""
    loaded = _teacher_unet_config(recipe)
    if loaded is None:
        require(recipe.teacher.kind == "twin", key,
                f"{what} needs a teacher whose features correspond to the student's channel for channel: the "
                f"student's full-precision twin. teacher.kind is {recipe.teacher.kind!r}; set teacher.kind = "
                "'twin' (an SR3 or other unrelated teacher still works for output_weight and one_step)")
        return
    name, config = loaded
    why = ""
    if name not in UNET_CLASS_NAMES:
        why = f"its denoiser is a {name or 'unknown model'}, not the student's BiDiffSRUNet"
    elif difference := layout_difference(student.config, config):
        field, mine, theirs = difference
        why = f"its {field} is {theirs!r} but student.unet.{field} is {mine!r}"
    require(not why, key, f"{what} needs the student's full-precision twin as the teacher, but in "
            f"{recipe.teacher.path} {why}. Train a twin with a 'teacher' stage (teacher.kind = 'twin') or drop it "
            "(output_weight and one_step work with any teacher on the same process)")


def _check_hub_dataset(recipe: Recipe) -> None:
    """Before training: the Hub dataset exists, or, without a connection, has been downloaded before (otherwise
    datasets retries for a while and ends in a traceback)."""
    repo = recipe.data.train_hub
    try:
        HfApi().dataset_info(repo, timeout=10)
        return
    except RepositoryNotFoundError:
        raise SettingError("data.train_hub", f"there is no dataset {repo!r} on the Hub (a private one "
                          "needs `hf auth login`)") from None
    except Exception as err:  # offline mode, no network, a proxy error: fall back to what is cached
        why = f"{type(err).__name__}"
    cached = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}"
    require(cached.is_dir(), "data.train_hub",
            f"cannot reach the Hub for {repo!r} ({why}) and it is not in the local cache ({cached}); connect once to "
            "download it (it is then reused offline; set HF_HUB_OFFLINE=1), or point data.train at a folder of images")


def _check_validation_folder(recipe: Recipe) -> None:
    """Before training: the validation folder has images, and every one is at least data.val_crop on each side."""
    d = recipe.data
    files = image_files(d.val)
    require(bool(files), "data.val", f"folder {d.val} holds no images")
    if d.val_max_images:
        files = files[: d.val_max_images]
    for f in files:
        try:
            with Image.open(f) as im:
                w, h = im.size
        except UNREADABLE as err:
            raise SettingError("data.val", f"cannot read validation image {f}: {err}") from None
        require(min(w, h) >= d.val_crop, "data.val_crop",
                f"is {d.val_crop} but validation image {f} is only {w}x{h}")
        side = d.val_crop or min(w, h)
        need = SSIM_WINDOW + 2 * recipe.run.scale
        require(d.val_lr_only or side >= need, "data.val_crop" if d.val_crop else "data.val",
                f"validation images must be at least {need} pixels a side (SSIM's 11x11 window inside the "
                f"{recipe.run.scale}-pixel border), but {f} gives {side}")
        require(d.degradation != "realesrgan" or d.val_lr_only or min(w, h) >= MIN_PATCH, "data.val",
                f"validation image {f} is {w}x{h}: realesrgan degradations need at least {MIN_PATCH} pixels a side")


def _check_training_folder(recipe: Recipe) -> None:
    """Before training: data.train holds images (searched in subfolders too, as datasets' imagefolder does), some
    of them readable and at least as large as the largest training patch on both sides."""
    d, r = recipe.data, recipe.run
    try:
        files = training_image_files(d.train)
    except DataError as err:
        raise SettingError("data.train", str(err)) from None
    require(bool(files), "data.train",
            f"folder {d.train} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, in subfolders too)")
    sides = []
    for f in files:
        try:
            with Image.open(f) as im:
                sides.append(min(im.size) - min(im.size) % r.scale)
        except UNREADABLE:
            continue  # reported and skipped when the data is prepared
    require(bool(sides), "data.train", f"none of the {len(files)} images in {d.train} can be read "
            f"(the first is {files[0]})")
    patch, key = max((s.patch(d.patch_size), f"stages[{i}].patch_size" if s.patch_size else "data.patch_size")
                     for i, s in enumerate(recipe.stages))
    require(max(sides) >= patch, key, f"is {patch} but no training image in {d.train} is that large on both "
            f"sides (the largest allows {max(sides)}px at x{r.scale})")


def _check_student_init(recipe: Recipe, student) -> None:
    """student.init before training: an intact saved student with readable, finite weights whose layout and
    timesteps are the recipe's student's (the same binarizer, or its full-precision twin, binarizer "none", which the
    binarized student then starts from)."""
    folder = Path(recipe.student.init)
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SettingError("student.init", f"cannot read {folder}/config.json: {err}") from None
    why = damage(folder) if (folder / CHECKSUMS).is_file() else ""
    require(not why, "student.init", f"{folder} is damaged: {why}")
    weights = folder / SAFETENSORS_WEIGHTS_NAME
    try:
        bad = nonfinite_tensors(load_file(weights))
    except Exception as err:  # missing, truncated or not a safetensors file
        raise SettingError("student.init", f"cannot read {weights}: {err}") from None
    require(not bad, "student.init", f"{weights} holds NaN or infinite weights ({name_tensors(bad)})")
    twin = saved.get("binarizer") == "none" and student.config.binarizer != "none"
    difference = layout_difference(student.config, saved)
    keys = ("num_train_timesteps",) if twin else ("num_train_timesteps", "binarizer", "timestep_groups")
    mismatch = next(((k, student.config[k], saved.get(k)) for k in keys if saved.get(k) != student.config[k]), None)
    problem = difference or mismatch
    if problem:
        key, mine, theirs = problem
        raise SettingError("student.init", f"{folder} is a student with {key} = {theirs!r}, but this "
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


def preflight(recipe: Recipe) -> CheckedRecipe:
    """Check everything the recipe refers to, raising a RecipeError naming the key at fault; return what was built."""
    with named_in(recipe.source):
        return _preflight(recipe)


def _preflight(recipe: Recipe) -> CheckedRecipe:
    r, d, t = recipe.run, recipe.data, recipe.teacher
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "")
    require(not (r.mixed_precision and launcher and launcher != r.mixed_precision), "run.mixed_precision",
            f"is {r.mixed_precision!r} but the launcher asks for {launcher!r} (accelerate launch --mixed_precision or "
            "accelerate config): change one of them, or leave run.mixed_precision out to follow the launcher")
    for i, tracker in enumerate(r.log_with):
        require(importlib.util.find_spec(tracker) is not None, f"run.log_with[{i}]",  # named as its package
                f"{tracker!r} needs the {tracker} package, which is not installed (pip install {tracker}), or drop it")
    require(r.mixed_precision != "fp16" or torch.cuda.is_available(), "run.mixed_precision",
            "'fp16' needs a GPU (this machine has none); use 'bf16' or 'no' on a CPU")
    if d.train:
        inside = Path(r.output_dir).resolve().is_relative_to(Path(d.train).resolve())
        require(not inside, "run.output_dir", f"{r.output_dir} is inside data.train ({d.train}): its evaluation "
                "images would become training data; choose a folder outside it")
    require(r.resume in ("latest", "never") or Path(r.resume).is_dir(), "run.resume",
            f"must be 'latest', 'never' or an existing checkpoint folder, got {r.resume!r}")

    for key in ("train", "val", "val_lr"):
        folder = getattr(d, key)
        require(not folder or Path(folder).is_dir(), f"data.{key}", f"folder {folder} does not exist")
    try:
        degradation = build_degradation(recipe)
    except (DegradationError, CheckpointError) as err:
        raise SettingError("data.degradation_options", str(err)) from None

    if t.path:
        require((Path(t.path) / "model_index.json").is_file(), "teacher.path",
                f"{t.path} is not a teacher folder (no model_index.json)")
        _warn_degradation_mismatch(recipe)
    process = _build_recipe_process(recipe)
    student_config = _student_unet_config(recipe, process)
    _check_kwargs("student.unet", recipe.student.unet, BiDiffSRUNet)
    student = _check_buildable("student.unet", BiDiffSRUNet, student_config)
    pixels_per_position = student.size_multiple * process.spatial_factor
    if recipe.trains_teacher():
        if t.kind == "sr3":
            _check_kwargs("teacher.unet", t.unet, SR3UNet)
            _check_buildable("teacher.unet", SR3UNet, t.unet)
        else:
            require(not t.unet, "teacher.unet",
                    "a twin teacher copies student.unet (set the widths there); leave teacher.unet empty")
    if recipe.student.init:
        require((Path(recipe.student.init) / "config.json").is_file(), "student.init",
                f"{recipe.student.init} is not a saved student folder (no config.json)")
        _check_student_init(recipe, student)
    if recipe.student.init_from_teacher:
        require(bool(t.path) or recipe.stages[0].trains_teacher, "student.init_from_teacher",
                "needs a teacher before the first student stage: set teacher.path or put a 'teacher' stage first")
        _check_alignment(recipe, "student.init_from_teacher", student, "starting the student from the teacher")
    binarizer = get_binarizer(student.config.binarizer)
    if binarizer.needs_full_precision_init:
        require(recipe.student.init_from_teacher or bool(recipe.student.init), "student.unet.binarizer",
                f"{binarizer.name!r} splits full-precision weights into its branches when it starts, so the student "
                "must start from its full-precision twin (student.init_from_teacher = true with a twin teacher) or "
                "from a saved student (student.init)")

    teacher_ready = bool(t.path)
    for i, stage in enumerate(recipe.stages):
        setup = StageSetup(recipe, process, student, pixels_per_position, teacher_ready,
                           lambda key, what: _check_alignment(recipe, key, student, what))
        stage.check_setup(f"stages[{i}]", setup)
        teacher_ready = teacher_ready or stage.trains_teacher

    e = recipe.eval
    if e.num_inference_steps:
        try:
            process.inference_timesteps(e.num_inference_steps)
        except ValueError as err:
            raise SettingError("eval.num_inference_steps", str(err)) from None
    require(e.tile_size % pixels_per_position == 0, "eval.tile_size",
            f"must be 0 (the process's default) or >= 64 and a multiple of {pixels_per_position} (the student's size "
            f"multiple in pixels), got {e.tile_size}")
    if d.train:
        _check_training_folder(recipe)
    if d.train_hub:
        _check_hub_dataset(recipe)
    if d.val and e.enabled:
        _check_validation_folder(recipe)
    if e.lpips_backbone:
        require(Path(e.lpips_backbone).is_file(), "eval.lpips_backbone", f"file {e.lpips_backbone} does not exist")
    if recipe.publish.push_to_hub:
        require(bool(get_token()), "publish.push_to_hub", "no Hugging Face credentials to push with: run `hf auth "
                "login` or set HF_TOKEN before training, or leave publish.push_to_hub out (push later with "
                "`bidistill push`)")
    return CheckedRecipe(recipe, process, student_config, degradation)


def load_checked(path: str | Path, overrides: list[str] = ()) -> CheckedRecipe:
    """Read, parse and pre-flight-check a recipe file: `load_recipe` then `preflight`."""
    return preflight(load_recipe(path, overrides))
