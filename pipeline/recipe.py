"""Typed recipes: a TOML file parsed into dataclasses, every key and value checked.

Parsing needs nothing but the file: what the recipe refers to (files, the Hub, the models and process it builds) is
checked once before training by `pipeline.preflight`, which hands the trainer what it built.

A recipe has the tables [run], [data], [process], [teacher], [student], [eval], [publish] and an ordered array
[[stages]], each stage one plug-in of `pipeline.stages` (its `type` picks its settings). [process] is `type`
("ddpm": BI-DiffSR's, the default; "resshift") plus that process's settings
(`teachers.ddpm.DDPMProcess`, `teachers.resshift.ResShiftProcess`); teacher and student live on it.
An unknown or mistyped key, a missing required key, a missing file or an impossible value raises `RecipeError`
naming the recipe file and the key (e.g. `recipes/x.toml: stages[1].lr: must be > 0, got -1.0`).
`--set key=value` overrides use the same dotted paths (`stages.0.steps=10`, `run.output_dir="out"`), with the
value read as a TOML literal (bare words are strings).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.builtin_data import BUILTINS
from pipeline.degradations import DEGRADATIONS, MIN_PATCH
from pipeline.settings import RecipeError, named_in, require, require_name
from pipeline.stages import STAGE_CONFIGS, StageConfig
from teachers import TEACHER_KINDS

__all__ = ["Recipe", "RecipeError", "StageConfig", "apply_override", "load_recipe", "parse_recipe"]

PRECISIONS = ("no", "fp16", "bf16")
TRACKERS = ("tensorboard", "wandb")


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

    def check(self) -> None:
        require(self.scale in (2, 3, 4, 8), "run.scale", f"must be 2, 3, 4 or 8, got {self.scale}")
        require(self.mixed_precision in ("",) + PRECISIONS, "run.mixed_precision",
                f"must be one of {PRECISIONS} (or left out to follow the launcher), got {self.mixed_precision!r}")
        for i, tracker in enumerate(self.log_with):
            require(tracker in TRACKERS, f"run.log_with[{i}]", f"must be one of {TRACKERS}, got {tracker!r}")
        require_name(self.name, "run.name", "folders and logs")
        require(0 <= self.seed < 2**32, "run.seed", f"must be in [0, 2^32 - 1], got {self.seed}")
        for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
            require(getattr(self, key) > 0, f"run.{key}", f"must be > 0, got {getattr(self, key)}")


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

    def check(self, scale: int) -> None:
        require(sum(map(bool, (self.train, self.train_hub, self.builtin))) == 1, "data.train",
                "set exactly one of data.train (a folder of HR images), data.train_hub (a Hub dataset id) and "
                "data.builtin")
        require(self.builtin in ("",) + BUILTINS, "data.builtin", f"must be one of {BUILTINS}, got {self.builtin!r}")
        require(self.patch_size > 0 and self.patch_size % scale == 0, "data.patch_size",
                f"must be a positive multiple of run.scale={scale}, got {self.patch_size}")
        require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.num_proc >= 0, "data.num_proc", f"must be >= 0 (0: min(8, CPU count)), got {self.num_proc}")
        require(self.val_max_images >= 0 and self.val_crop >= 0, "data.val_crop",
                "val_crop and val_max_images must be >= 0")
        require(self.degradation in DEGRADATIONS, "data.degradation",
                f"must be one of {DEGRADATIONS}, got {self.degradation!r}")
        require(not self.val_lr_only or (self.val and not self.val_lr and not self.val_crop), "data.val_lr_only",
                "needs data.val (a folder of LR images) and neither data.val_lr nor data.val_crop")
        require(not (self.val_lr and self.degradation == "realesrgan"), "data.val_lr",
                "holds pre-made (bicubic) LR images; with realesrgan degradations the validation LR images are "
                "degraded copies of data.val made with fixed seeds: remove data.val_lr")
        require(not self.degradation_options or self.degradation == "realesrgan", "data.degradation_options",
                "only applies to data.degradation = \"realesrgan\"")
        require(self.degradation != "realesrgan" or self.val_crop == 0 or self.val_crop >= MIN_PATCH, "data.val_crop",
                f"must be 0 or at least {MIN_PATCH} with realesrgan degradations, got {self.val_crop}")


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

    def check(self) -> None:
        require(self.kind in TEACHER_KINDS, "teacher.kind", f"must be one of {TEACHER_KINDS}, got {self.kind!r}")
        require(self.autocast in PRECISIONS, "teacher.autocast",
                f"must be one of {PRECISIONS}, got {self.autocast!r}")


@dataclass
class StudentConfig:
    init: str = ""  # start from a saved student folder instead of random weights (a saved full-precision twin,
    # binarizer "none", starts a binarized student as init_from_teacher does: BiMaCoSR's branches split off its weights)
    init_from_teacher: bool = False  # start from the (twin) teacher's weights, as BiDM; needed for aligned SPD
    unet: dict = field(default_factory=dict)  # BiDiffSRUNet arguments

    def check(self) -> None:
        require(not (self.init_from_teacher and self.init), "student.init_from_teacher",
                "choose one of student.init (a saved student) and student.init_from_teacher")


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

    def check(self) -> None:
        require(self.num_inference_steps >= 0, "eval.num_inference_steps", "must be >= 0 (0: the process's default)")
        require(self.grid_images >= 0, "eval.grid_images", f"must be >= 0, got {self.grid_images}")
        require(self.tile_size == 0 or self.tile_size >= 64, "eval.tile_size",
                f"must be 0 (the process's default) or >= 64, got {self.tile_size}")


@dataclass
class PublishConfig:
    push_to_hub: str = ""  # "owner/name"
    private: bool = False

    def check(self) -> None:
        require(not self.push_to_hub or self.push_to_hub.count("/") == 1, "publish.push_to_hub",
                f"must look like 'owner/name', got {self.push_to_hub!r}")


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
        return any(s.needs_teacher for s in self.stages) or bool(self.teacher.path)

    def trains_teacher(self) -> bool:
        return any(s.trains_teacher for s in self.stages)

    def check(self) -> None:
        """Every value on its own and against the others; what they refer to is `pipeline.preflight`'s."""
        self.run.check()
        self.data.check(self.run.scale)
        self.teacher.check()
        self.student.check()
        self.eval.check()
        self.publish.check()
        require(bool(self.stages), "stages", "a recipe needs at least one [[stages]] entry")
        names = set()
        for i, stage in enumerate(self.stages):
            stage.check(f"stages[{i}]")
            require(stage.name not in names, f"stages[{i}].name", f"stage name {stage.name!r} is used twice")
            names.add(stage.name)

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


def _build(cls: type, table: Any, source: str, where: str, what: str = ""):
    if not isinstance(table, dict):
        raise RecipeError(source, where, f"must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"source"}
    unknown = sorted(set(table) - names)
    if unknown:
        raise RecipeError(source, f"{where}.{unknown[0]}",
                          f"unknown key; {what or cls.__name__} keys are: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(value, hints[name], source, f"{where}.{name}") for name, value in table.items()}
    return cls(**kwargs)


def _build_stage(table: Any, source: str, where: str) -> StageConfig:
    """A [[stages]] table as the settings of its type's plug-in."""
    if not isinstance(table, dict):
        raise RecipeError(source, where, f"must be a table, got {table!r}")
    kind = table.get("type", "")
    if not isinstance(kind, str) or kind not in STAGE_CONFIGS:
        raise RecipeError(source, f"{where}.type", f"must be one of {tuple(STAGE_CONFIGS)}, got {kind!r}")
    stage = _build(STAGE_CONFIGS[kind], table, source, where, what=f"a {kind!r} stage's")
    stage.name = stage.name or stage.type
    return stage


def parse_recipe(raw: dict, source: str = "<recipe>") -> Recipe:
    """Build and check a recipe from an already-parsed TOML document: keys, types and values (nothing it refers to)."""
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
    recipe.stages = [_build_stage(s, source, f"stages[{i}]") for i, s in enumerate(stages_raw)]
    with named_in(source):
        recipe.check()
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


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override, parse and check a recipe file (`pipeline.preflight` then checks what it refers to)."""
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
    return parse_recipe(raw, source)


