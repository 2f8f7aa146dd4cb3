"""The run's output folder: whose it is, who is using it, and which recipe made what is in it.

- Ownership: a run writes only into a folder it creates, an empty one, or one marked as an earlier BiDistill run
  (`.bidistill-run.json`); a folder holding anything else is refused, so a mistyped `run.output_dir` never replaces a
  user's files.
- Lock: the main process holds an exclusive `flock` on `.bidistill.lock` for the run's life; a second run on the same
  folder stops at once, naming the first one's pid. The kernel drops the lock when a process dies, so a lock file
  left by a killed run is stale by construction: the next run takes the folder over and says so.
- Checksums: every finished stage and checkpoint holds `checksums.json` (sha256 of each of its files), verified before
  it is used: a truncated or corrupted checkpoint is named and skipped for the newest intact one.
- Fingerprints: each stage is "complete" only for the recipe that produced it. A stage's fingerprint holds what
  determines its weights (the stage's settings, the models' configs and student.init's weights, the process, the data
  with a digest of the training images' names, sizes and times and the LR degradation, the mixed precision and the
  teacher's autocast, the seed and the previous stage's fingerprint); it is written beside the stage's weights and
  into every checkpoint. A finished stage or checkpoint made by a different recipe is an error that says what changed
  and how to choose.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path

from diffusers.utils import SAFETENSORS_WEIGHTS_NAME

from pipeline.data import training_image_files
from pipeline.degradations import build_degradation
from students.checksums import sha256_file

MARKER = ".bidistill-run.json"
LOCK = ".bidistill.lock"
FINGERPRINT = "fingerprint.json"
# Stage and process settings added after runs existed: left out of a fingerprint while at their default, so a folder
# made before the setting existed (with the same behaviour) stays valid.
ADDED_STAGE_SETTINGS = {"direct_weight": 1.0, "xt_weight": 0.0, "gt_weight": 0.0}
# Before each stage type had its own settings, every stage held every type's: a fingerprint still records the other
# types' settings at their defaults, so folders made then stay valid.
SHARED_TABLE_STAGE_SETTINGS = {"spd_weight": 0.01, "spd_patches": 4, "output_weight": 0.0, "features": [],
                               "teacher_steps": 0, **ADDED_STAGE_SETTINGS}
ADDED_PROCESS_SETTINGS = {"condition_resize": "opencv"}
# What a fingerprint records of files (the training images' list, sizes and times; student.init's weights), added
# after runs existed: a fingerprint written before holds no such entry, and is compared without it.
LATER_KEYS = (("data", "content"), ("models", "student_init_sha256"))


class RunFolderError(RuntimeError):
    """The output folder cannot be used as asked; the message says why and what to do."""


class RunFolder:
    """An output folder claimed for one run (ownership checked, lock held until `release`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self.notice = ""  # a line for the user (e.g. a stale lock taken over)

    def check(self) -> None:
        """Refuse a path that is a file or a folder holding files BiDistill did not write (writes nothing)."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"run.output_dir {path} is a file, not a folder")
        if path.is_dir() and not (path / MARKER).is_file():
            foreign = sorted(p.name for p in path.iterdir())
            if foreign:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise RunFolderError(f"run.output_dir {path} already holds files that BiDistill did not write "
                                     f"({shown}); choose a new or empty folder, so that nothing of yours is replaced")

    def holder(self) -> str:
        """The pid of a live run holding the folder's lock ('' when none does); takes nothing."""
        lock = self.path / LOCK
        if not lock.is_file():
            return ""
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return ""
        except BlockingIOError:
            return os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)

    def claim(self) -> "RunFolder":
        """`check`, then create the folder, take its lock and mark it as a BiDistill run folder."""
        self.check()
        path = self.path
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(f"another run (pid {holder}) is using {path}; wait for it to finish or choose another "
                                 "run.output_dir") from None
        previous = os.read(fd, 64).decode(errors="replace").strip()
        if previous:
            self.notice = (f"the run with pid {previous} ended without releasing {path} (killed?); this run takes it "
                           "over and resumes from what it left")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        if not (path / MARKER).is_file():
            (path / MARKER).write_text(json.dumps({"made_by": "bidistill"}) + "\n")
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file: the run ended cleanly
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _public(config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def training_images_digest(folder: str | Path) -> str:
    """A digest of the image files under a training folder: names, sizes and modification times (an image replaced
    at the same path changes it; the bytes are not read, so it costs nothing on large data sets)."""
    entries = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
               for p in training_image_files(folder)]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def stage_fingerprints(recipe, process, student_config: dict, precision: str = "no") -> list[dict]:
    """For each stage, the recipe parts that determine its weights (see the module docstring); `precision` is the
    run's resolved mixed precision."""
    r, d, t, s = recipe.run, recipe.data, recipe.teacher, recipe.student
    process_settings = {k: v for k, v in _public(process.config).items()
                        if not (k in ADDED_PROCESS_SETTINGS and v == ADDED_PROCESS_SETTINGS[k])}
    common = {"seed": r.seed, "scale": r.scale, "process": process_settings,
              "data": {"train": d.train, "train_hub": d.train_hub, "builtin": d.builtin, "train_split": d.train_split,
                       "image_column": d.image_column, "patch_size": d.patch_size}}
    if precision != "no":  # full precision (the default) leaves earlier fingerprints as they were
        common["precision"] = precision
    if d.train:
        common["data"]["content"] = training_images_digest(d.train)
    degradation = build_degradation(recipe)
    if degradation is not None:  # bicubic LR (the default) leaves earlier fingerprints as they were
        common["data"]["degradation"] = json.loads(json.dumps({"type": d.degradation,
                                                               **dataclasses.asdict(degradation)}))
    teacher = {"path": t.path, "kind": t.kind, "unet": t.unet}
    if t.autocast != "no":
        teacher["autocast"] = t.autocast
    out, previous = [], ""
    for stage in recipe.stages:
        settings = {k: v for k, v in {**SHARED_TABLE_STAGE_SETTINGS, **dataclasses.asdict(stage)}.items()
                    if k != "name" and not (k in ADDED_STAGE_SETTINGS and v == ADDED_STAGE_SETTINGS[k])}
        models = {"teacher": teacher, "student": _public(student_config)} if stage.trains_teacher else {
            "teacher": teacher, "student": _public(student_config), "student_init": s.init,
            "init_from_teacher": s.init_from_teacher}
        if s.init and not stage.trains_teacher:
            models["student_init_sha256"] = sha256_file(Path(s.init) / SAFETENSORS_WEIGHTS_NAME)
        fingerprint = {**common, "stage": settings, "models": models, "previous_stage": previous}
        previous = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        out.append(fingerprint)
    return out


def flat_dict(d, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b.c": leaf}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(flat_dict(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def describe_changes(old: dict, new: dict) -> str:
    """'key: old -> new' for each setting that differs (at most 6)."""
    a, b = flat_dict(old), flat_dict(new)
    changed = [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k)]
    return "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")


def check_fingerprint(found: dict | None, expected: dict, what: str, stage_key: str) -> None:
    """A finished stage or checkpoint made by another recipe is a RunFolderError saying what changed."""
    if found is not None:
        expected = {k: dict(v) if isinstance(v, dict) else v for k, v in expected.items()}
        for outer, key in LATER_KEYS:
            if key not in found.get(outer, {}):
                expected.get(outer, {}).pop(key, None)
    if found == expected:
        return
    change = describe_changes(found, expected) if found is not None else "it has no fingerprint (an older version)"
    raise RunFolderError(f"{what} was made by a different recipe ({change}). Reusing it would hand back a model of the "
                         f"old recipe as if it were this one's. Choose a new run.output_dir, or set "
                         f"run.resume = \"never\" to train {stage_key} and later stages again in this folder")


def read_fingerprint(folder: Path) -> dict | None:
    file = Path(folder) / FINGERPRINT
    return json.loads(file.read_text()) if file.is_file() else None


def write_fingerprint(folder: Path, fingerprint: dict) -> None:
    (Path(folder) / FINGERPRINT).write_text(json.dumps(fingerprint, indent=2, sort_keys=True))

