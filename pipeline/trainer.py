"""The staged trainer: runs a recipe's stages in order on Hugging Face Accelerate.

One Accelerator for the run (DDP across processes, fp16/bf16 mixed precision, gradient accumulation, trackers);
each stage gets a fresh optimizer (Adam), LR schedule (diffusers' get_scheduler), optional EMA (diffusers'
EMAModel) and gradient clipping. Model state flows from stage to stage.

Outputs under run.output_dir, a folder the run claims first (`pipeline.run_folder`: it must be new, empty or an
earlier run's, and it is locked for the run's life):
    stages/<i>-<name>/            the model after stage i (save_pretrained; EMA weights when EMA is on) and the
                                  fingerprint of the recipe parts that made it. Its presence marks the stage complete
                                  for that recipe only; it is written to a temporary folder and renamed.
    checkpoints/<i>-<name>/step-N accelerate's save_state (model.safetensors, optimizer, RNG) + LR schedule, EMA,
                                  trainer_state.json and the model config; written to a temporary folder and renamed,
                                  so a kill at any moment leaves only complete checkpoints.
    student/  teacher/            the final models;  eval/  metrics.json + samples.png;  logs/  tensorboard.
    publish/                      diffusers-format pipeline folder + packed 1-bit file + model card (pipeline/publish.py),
                                  pushed to publish.push_to_hub when set.

`run.resume = "latest"` skips completed stages and continues the current one from its newest checkpoint; a finished
stage or checkpoint made by a different recipe stops the run before anything trains, saying what changed. Every
random draw of a step (crops, flips, timesteps, noise, dropout) is seeded from (seed, stage, step, micro-step,
rank), so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from PIL import Image
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from pipeline.atomic import folder_written_whole, partial_sibling, replace_folder
from pipeline.builtin_data import export_skimage
from pipeline.data import (PatchDataset, StepBatchSampler, load_hr_dataset, load_lr_images, load_validation, make_pairs,
                           seed_of)
from pipeline.degradations import build_degradation, degraded_validation
from pipeline.evaluate import AUTOCAST, evaluate
from pipeline.loading import load_student
from pipeline.metrics import LPIPSUnavailable, load_lpips
from pipeline.publish import files_not_published, push_folder, write_model_folder
from pipeline.recipe import Recipe, StageConfig, build_recipe_process, student_unet_config
from pipeline.resize import upsample_cond
from pipeline.run_folder import (RunFolder, RunFolderError, check_fingerprint, flat_dict, read_fingerprint,
                                 stage_fingerprints, write_fingerprint)
from pipeline.stages import DirectStage, FeatureDistillStage, OneStepStage, Stage
from students.bidiffsr import BIDiffSRUNet
from students.checksums import damage, sha256_file, write_checksums
from students.finite import name_tensors, nonfinite_tensors
from teachers import Teacher, build_teacher_denoiser, load_teacher
from teachers.process import DiffusionProcess


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss or weights; the message names the stage, the step and the last
    checkpoint whose weights are all finite (or says there is none)."""


def _nonfinite_checkpoint(folder: Path) -> str:
    """Why a checkpoint's model must not be resumed from ('' when its weights are all finite)."""
    weights = folder / "model.safetensors"
    bad = nonfinite_tensors(load_file(weights)) if weights.is_file() else []
    return f"{weights} holds NaN or infinite weights ({name_tensors(bad)})" if bad else ""


def _tracker_config(recipe: Recipe) -> dict:
    """The recipe as flat scalars for the trackers (lists as JSON text)."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flat_dict(recipe.to_dict()).items()}


class StepsPerSecond(ProgressColumn):
    """Training speed in the progress bar."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "- it/s", style="progress.data.speed")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Trainer:
    def __init__(self, recipe: Recipe, accelerator: Accelerator | None = None):
        self.recipe = recipe
        r = recipe.run
        self.out = Path(r.output_dir)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=r.mixed_precision or None,  # None: the launcher's setting
            log_with=list(r.log_with) or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
        )
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.accelerator.num_processes != world:
            raise RuntimeError(f"accelerate runs {self.accelerator.num_processes} process(es) but WORLD_SIZE={world}: "
                               "the processes would train without synchronising gradients")
        self.console = Console(soft_wrap=not sys.stdout.isatty())  # logs and batch jobs: no wrapping at 80 columns
        if world == 1 and "MASTER_PORT" in os.environ:  # the launcher prepared a rendezvous, then started one process
            self.console.print("[yellow]warning: the launcher was asked for several processes but runs one (`accelerate "
                               "launch --cpu --num_processes N` does that); for N CPU processes use "
                               "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N`[/yellow]")
        self.global_step = 0
        self._pairs = None
        self.process = build_recipe_process(recipe)  # teacher and student live on it
        self.student_process = self.process  # becomes the one-step variant after a one_step stage
        self.student_config = student_unet_config(recipe, self.process)
        self.fingerprints = stage_fingerprints(recipe, self.process, self.student_config,
                                               self.accelerator.mixed_precision)
        self.degradation = build_degradation(recipe)  # None: the data's bicubic LR
        self._checkpoints: dict[int, Path | None] = {}
        self._complete: dict[int, bool] = {}

    # ---- paths -------------------------------------------------------------------------------------------------
    def stage_dir(self, i: int, stage: StageConfig) -> Path:
        return self.out / "stages" / f"{i}-{stage.name}"

    def checkpoint_root(self, i: int, stage: StageConfig) -> Path:
        return self.out / "checkpoints" / f"{i}-{stage.name}"

    def find_checkpoint(self, i: int, stage: StageConfig) -> Path | None:
        """The checkpoint stage i resumes from: the newest intact one (a damaged one is named and skipped); one
        made by another recipe is a RunFolderError. Found once per run (the up-front check) and remembered."""
        if i not in self._checkpoints:
            self._checkpoints[i] = self._find_checkpoint(i, stage)
        return self._checkpoints[i]

    def _find_checkpoint(self, i: int, stage: StageConfig) -> Path | None:
        resume = self.recipe.run.resume
        if resume == "never":
            return None
        if resume != "latest":
            path = Path(resume)
            why = damage(path)
            if why:
                raise RunFolderError(f"run.resume names a damaged checkpoint: {why}")
            state = json.loads((path / "trainer_state.json").read_text())
            if state["stage_index"] != i:
                return None
            check_fingerprint(state.get("fingerprint"), self.fingerprints[i], f"checkpoint {path}", f"stages[{i}]")
            return path
        root = self.checkpoint_root(i, stage)
        candidates = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
        for found in candidates:
            why = damage(found) or _nonfinite_checkpoint(found)
            if why:
                self.console.print(f"[yellow]skipping checkpoint {found}: {why}[/yellow]")
                continue
            state = json.loads((found / "trainer_state.json").read_text())
            check_fingerprint(state.get("fingerprint"), self.fingerprints[i], f"checkpoint {found}", f"stages[{i}]")
            if found != candidates[0]:
                self.console.print(f"[yellow]resuming from the newest intact checkpoint, {found}[/yellow]")
            return found
        if candidates:
            self.console.print(f"[yellow]no intact checkpoint of stage {i} ({stage.name}): it starts again[/yellow]")
        return None

    def stage_complete(self, i: int, stage: StageConfig) -> bool:
        """A finished stage counts only for the recipe that made it (else a RunFolderError saying what changed).
        Checked once per run (the up-front check, which hashes its files) and remembered."""
        if i not in self._complete:
            self._complete[i] = self._stage_complete(i, stage)
        return self._complete[i]

    def _stage_complete(self, i: int, stage: StageConfig) -> bool:
        done = self.stage_dir(i, stage)
        if self.recipe.run.resume == "never" or not done.is_dir():
            return False
        why = damage(done)
        if why:
            raise RunFolderError(f"stage {i} ({stage.name}) is damaged: {why}. Delete {done} to train it again from "
                                 "its newest intact checkpoint")
        check_fingerprint(read_fingerprint(done), self.fingerprints[i], f"stage {i} ({stage.name}) in {done}",
                          f"stages[{i}]")
        return True

    def check_earlier_work(self) -> None:
        """Before anything trains: every finished stage and newest checkpoint in the folder must be this recipe's,
        and the published folder, which a run replaces whole, must hold nothing a user added."""
        for i, stage in enumerate(self.recipe.stages):
            if not self.stage_complete(i, stage):
                self.find_checkpoint(i, stage)
        added = files_not_published(self.out / "publish")
        if added:
            raise RunFolderError(f"{self.out / 'publish'} holds files no publish wrote ({', '.join(added[:3])}); "
                                 "this run replaces that folder whole: move them out first")

    # ---- models and data ---------------------------------------------------------------------------------------
    def resolve_builtin_data(self) -> None:
        """Write a built-in data set to <output>/data and point data.train (and an empty data.val) at it."""
        d = self.recipe.data
        if d.builtin == "skimage":
            with self.accelerator.main_process_first():
                train, val = export_skimage(self.out / "data" / "skimage")
            d.train, d.val = str(train), d.val or str(val)

    def training_pairs(self):
        if self._pairs is None:
            d = self.recipe.data
            patch = max(s.patch_size or d.patch_size for s in self.recipe.stages)
            with self.accelerator.main_process_first():  # the main process builds the datasets cache first
                ds = load_hr_dataset(d.train, d.train_hub, d.train_split, d.image_column)
                self._pairs = make_pairs(ds, self.recipe.run.scale, patch, d.image_column, d.train or d.train_hub,
                                         num_proc=d.num_proc)
        return self._pairs

    def new_teacher(self) -> Teacher:
        t = self.recipe.teacher
        set_seed(self.recipe.run.seed)
        denoiser = build_teacher_denoiser(t.kind, t.unet, self.student_config)
        return Teacher(denoiser, self.process, scale=self.recipe.run.scale,
                       degradation=self.recipe.data.degradation)

    def prepare_teacher(self, teacher: Teacher) -> Teacher:
        teacher.check_scale(self.recipe.run.scale, source=f"recipe's run.scale ({self.recipe.source})")
        teacher.freeze().to(self.accelerator.device)
        teacher.autocast_dtype = AUTOCAST[self.recipe.teacher.autocast]
        return teacher

    def initial_student(self, teacher: Teacher | None) -> BIDiffSRUNet:
        s = self.recipe.student
        saved = BIDiffSRUNet.from_pretrained(s.init) if s.init else None
        set_seed(self.recipe.run.seed)
        student = BIDiffSRUNet(**self.student_config)
        if saved is not None and (saved.config.binarizer != "none" or student.config.binarizer == "none"):
            return saved
        twin = saved if saved is not None else teacher.unet if s.init_from_teacher else None
        if twin is not None:  # a saved full-precision twin, or the teacher (a twin)
            fresh = student.init_from_teacher(twin)
            self.console.print(f"student starts from the {'saved twin' if saved is not None else 'teacher'}'s weights "
                               f"({len(fresh)} student-only tensors keep their initial values)")
        return student

    def make_stage(self, stage: StageConfig, student: BIDiffSRUNet, teacher: Teacher | None) -> Stage:
        cross_timestep = bool(student.config.cross_timestep_blocks)
        if stage.type == "direct":
            return DirectStage(self.student_process, cross_timestep)
        if stage.type == "one_step":
            self.student_process = self.process.one_step_variant()
            return OneStepStage(teacher, self.student_process, stage.teacher_steps or None,
                                xt_weight=stage.xt_weight, gt_weight=stage.gt_weight)
        names = []
        if stage.spd_weight > 0:
            why = student.layout_mismatch(teacher.unet)
            if why:  # the recipe check catches this up front; a hand-edited folder could still get here
                raise ValueError(f"stage {stage.name!r}: SPD needs the student's full-precision twin as teacher: {why}")
            names = list(stage.features) or student.feature_names()
        return FeatureDistillStage(teacher, self.student_process, names, stage.spd_weight, stage.spd_patches,
                                   stage.output_weight, cross_timestep, stage.direct_weight)

    def load_student_stage(self, folder: Path) -> BIDiffSRUNet:
        student, self.student_process = load_student(folder)
        return student

    # ---- the run -----------------------------------------------------------------------------------------------
    def run(self) -> dict | None:
        """Claim the output folder (ownership, lock), check what earlier runs left in it, then train, evaluate and
        publish; the lock is released however the run ends."""
        folder = RunFolder(self.out)
        if self.accelerator.is_main_process:
            folder.claim()
            if folder.notice:
                self.console.print(f"[yellow]{folder.notice}[/yellow]")
        self.accelerator.wait_for_everyone()
        try:
            self.check_earlier_work()
            self.print_summary()
            return self._run()
        finally:
            folder.release()

    def print_summary(self) -> None:
        """What is about to run: processes, device, precision, batches, steps, output folder, what resumes."""
        acc, r = self.accelerator, self.recipe
        if not acc.is_main_process:
            return
        table = Table(title=f"{r.run.name} ({r.source})", title_justify="left")
        for column in ("stage", "type", "steps", "batch / device", "effective batch", "lr", "state"):
            table.add_column(column, justify="left" if column in ("stage", "type", "state") else "right",
                             overflow="fold")
        for i, stage in enumerate(r.stages):
            if self.stage_complete(i, stage):
                state = "finished (reused)"
            elif (checkpoint := self.find_checkpoint(i, stage)) is not None:
                state = f"resumes from {checkpoint.name}"
            else:
                state = "new"
            table.add_row(f"{i}-{stage.name}", stage.type, str(stage.steps), str(stage.batch_size),
                          str(stage.batch_size * stage.grad_accum * acc.num_processes), f"{stage.lr:g}", state)
        self.console.print(table)
        self.console.print(f"processes {acc.num_processes} | device {acc.device} | precision {acc.mixed_precision}"
                           f"{' (from the launcher)' if not r.run.mixed_precision else ''} | process "
                           f"{self.process.name} | output {self.out} | resume {r.run.resume}")

    def _run(self) -> dict | None:
        acc, recipe = self.accelerator, self.recipe
        if acc.is_main_process:
            (self.out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        if recipe.run.log_with:
            acc.init_trackers(recipe.run.name, config=_tracker_config(recipe))
        self.resolve_builtin_data()
        teacher = self.prepare_teacher(load_teacher(recipe.teacher.path)) if recipe.teacher.path else None
        student = None
        for i, stage in enumerate(recipe.stages):
            done = self.stage_dir(i, stage)
            if self.stage_complete(i, stage):
                self.console.print(f"[dim]stage {i} ({stage.name}) already complete: {done}[/dim]")
                self.global_step += stage.steps
                if stage.type == "teacher":
                    teacher = self.prepare_teacher(load_teacher(done))
                else:
                    student = self.load_student_stage(done)
            elif stage.type == "teacher":
                teacher = self.new_teacher()
                teacher.register_modules(unet=self.train_stage(i, stage, DirectStage(self.process), teacher.unet))
                self.save_stage(teacher, done, fingerprint=self.fingerprints[i])
                teacher = self.prepare_teacher(teacher)
            else:
                student = student if student is not None else self.initial_student(teacher)
                student = self.train_stage(i, stage, self.make_stage(stage, student, teacher), student)
                self.save_stage(student, done, self.student_process, fingerprint=self.fingerprints[i])

        self.student, self.teacher = student, teacher
        acc.wait_for_everyone()
        if acc.is_main_process:
            if student is not None:
                self.save_stage(student, self.out / "student", self.student_process)
            if teacher is not None and not recipe.teacher.path:
                self.save_stage(teacher, self.out / "teacher")
        result = None
        if acc.is_main_process and recipe.data.val and recipe.eval.enabled:
            result = self.evaluate(student, teacher)
            self.log_evaluation(result)
        if acc.is_main_process and student is not None:
            self.publish(student, teacher, result if result is not None else self.last_evaluation())
        acc.wait_for_everyone()
        acc.end_training()
        return result

    def last_evaluation(self) -> dict | None:
        """The earlier evaluation of exactly this student (eval/metrics.json records the weights' sha256), so that a
        rerun without evaluation keeps the model card's table."""
        file, weights = self.out / "eval" / "metrics.json", self.out / "student" / SAFETENSORS_WEIGHTS_NAME
        try:
            metrics = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not weights.is_file() or metrics.get("student_sha256") != sha256_file(weights):
            return None
        self.console.print(f"[dim]evaluation off: the model card keeps the last evaluation ({file})[/dim]")
        return metrics

    def publish(self, student, teacher, metrics) -> None:
        """Write the publishable folder; push it when the recipe names a repository."""
        p = self.recipe.publish
        folder = write_model_folder(student.to("cpu"), self.student_process, self.recipe.run.scale, self.out / "publish",
                                    metrics=metrics, recipe=self.recipe.to_dict(), repo_id=p.push_to_hub,
                                    license=teacher.config.get("license", "") if teacher is not None else "")
        self.console.print(f"published folder: {folder}")
        if p.push_to_hub:
            url = push_folder(folder, p.push_to_hub, private=p.private)
            self.console.print(f"pushed to {p.push_to_hub}: {url}")

    def save_stage(self, model, final: Path, process: DiffusionProcess | None = None,
                   fingerprint: dict | None = None) -> None:
        """A model folder (a student with its process beside its config, or a teacher pipeline, and for a stage the
        fingerprint of the recipe that made it), atomically."""
        if not self.accelerator.is_main_process:
            return
        with folder_written_whole(final) as tmp:
            model.save_pretrained(tmp)
            if process is not None:
                process.save_pretrained(tmp)  # its config, and a latent process's autoencoder
            if fingerprint is not None:
                write_fingerprint(tmp, fingerprint)
                write_checksums(tmp)

    def degraded(self, hr: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """A training batch whose LR the Real-ESRGAN degradation makes from its HR patches, on the device."""
        lr = self.degradation(hr, torch.Generator(hr.device).manual_seed(seed), random.Random(seed))
        return {"hr": hr, "lr": lr, "cond": upsample_cond(lr, self.recipe.run.scale)}

    def evaluate(self, student, teacher) -> dict:
        d, e = self.recipe.data, self.recipe.eval
        lpips_model, skipped = None, ""
        if e.lpips:
            try:
                lpips_model = load_lpips(e.lpips_backbone or None, self.accelerator.device)
            except LPIPSUnavailable as err:
                skipped = str(err)
        if d.val_lr_only:  # real LR images: nothing to degrade, nothing to compare with
            images = load_lr_images(d.val, d.val_max_images)
        else:
            images = load_validation(d.val, self.recipe.run.scale, d.val_lr, d.val_max_images, d.val_crop)
        if self.degradation is not None and not d.val_lr_only:
            images = degraded_validation(images, self.degradation, e.seed, self.out / "eval" / "lr")
        # the saved student's hash ties the metrics to these weights (see last_evaluation)
        record = {"student_sha256": sha256_file(self.out / "student" / SAFETENSORS_WEIGHTS_NAME)} if student is not None else {}
        if teacher is not None and e.teacher:
            record["teacher_autocast"] = self.recipe.teacher.autocast
        return evaluate(images, self.recipe.run.scale, student, teacher if e.teacher else None,
                        student_process=self.student_process, num_inference_steps=e.num_inference_steps or None, seed=e.seed, lpips_model=lpips_model,
                        out_dir=self.out / "eval", grid_images=e.grid_images, device=self.accelerator.device,
                        console=self.console, tile_size=e.tile_size or None, lpips_skipped=skipped, record=record)

    # ---- one stage ---------------------------------------------------------------------------------------------
    def train_stage(self, i: int, cfg: StageConfig, stage: Stage, model: torch.nn.Module) -> torch.nn.Module:
        acc, run = self.accelerator, self.recipe.run
        acc.free_memory()
        acc.gradient_accumulation_steps = cfg.grad_accum
        model.to(acc.device).train().requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        # fused Adam: one kernel for all parameters; 6-10% faster paper-size steps on CPU
        # (benchmarks/training_speed.py), where torch has it for the device
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                     fused=fused or None)
        schedule = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.steps)
        ema = EMAModel(params, decay=cfg.ema_decay) if cfg.ema_decay else None
        wrapped, optimizer = acc.prepare(model, optimizer)

        start = 0
        checkpoint = self.find_checkpoint(i, cfg)
        if checkpoint is not None:
            acc.load_state(str(checkpoint))
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            start, self.global_step = state["stage_step"], state["global_step"]
            schedule.load_state_dict(torch.load(checkpoint / "lr_scheduler.pt", weights_only=True))
            if ema is not None:
                ema.load_state_dict(torch.load(checkpoint / "ema.pt", weights_only=True))
            self.console.print(f"resuming stage {i} ({cfg.name}) at step {start} from {checkpoint}")
        if ema is not None:
            ema.to(acc.device)

        patch = cfg.patch_size or self.recipe.data.patch_size
        dataset = PatchDataset(self.training_pairs(), patch, run.scale, seed=seed_of(run.seed, i))
        loader = DataLoader(
            dataset,
            batch_sampler=StepBatchSampler(cfg.batch_size, acc.process_index, acc.num_processes, start * cfg.grad_accum),
            num_workers=self.recipe.data.num_workers,
            pin_memory=acc.device.type == "cuda",
        )
        batches = iter(loader)
        set_progress = getattr(acc.unwrap_model(wrapped), "set_training_progress", None)

        progress = Progress(TextColumn(f"[bold]{i}-{cfg.name}"), BarColumn(), MofNCompleteColumn(),
                            TaskProgressColumn(), StepsPerSecond(), TextColumn("loss {task.fields[loss]}"),
                            TimeRemainingColumn(), console=self.console, disable=not acc.is_local_main_process)
        running: dict[str, torch.Tensor] = {}
        interval, since = 0, time.perf_counter()
        samples_per_step = cfg.batch_size * cfg.grad_accum * acc.num_processes
        with progress:
            task = progress.add_task(cfg.name, total=cfg.steps, completed=start, loss="-")
            for step in range(start, cfg.steps):
                if set_progress is not None:
                    set_progress(step / cfg.steps)
                for micro in range(cfg.grad_accum):
                    batch = {k: v.to(acc.device, non_blocking=True) for k, v in next(batches).items()}
                    seed = seed_of(run.seed, i, step, micro, acc.process_index)
                    if self.degradation is not None:
                        batch = self.degraded(batch["hr"], seed_of(run.seed, i, step, micro, acc.process_index,
                                                                   "realesrgan"))
                    torch.manual_seed(seed)  # dropout
                    generator = torch.Generator(acc.device).manual_seed(seed)
                    with acc.accumulate(wrapped):
                        loss, logs = stage.loss(wrapped, batch, generator)
                        acc.backward(loss)
                        if acc.sync_gradients and cfg.max_grad_norm > 0:
                            acc.clip_grad_norm_(params, cfg.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    for k, v in logs.items():
                        running[k] = running.get(k, 0.0) + v / cfg.grad_accum
                schedule.step()
                interval += 1
                if ema is not None:
                    ema.step(params)
                done = step + 1
                self.global_step += 1
                progress.update(task, completed=done)
                checkpoint_now = done % run.checkpoint_every == 0 and done < cfg.steps
                if done % run.log_every == 0 or done == cfg.steps or checkpoint_now:  # a checkpoint is checked first
                    values = {k: acc.reduce(v.detach().reshape(1), "mean").item() / interval
                              for k, v in running.items()}  # the only host sync: once per log interval
                    self._check_finite(values, i, cfg, done)
                    values["lr"] = schedule.get_last_lr()[0]
                    now = time.perf_counter()
                    values["steps_per_s"] = interval / (now - since)
                    values["samples_per_s"] = values["steps_per_s"] * samples_per_step
                    values["peak_memory_gb"] = peak_memory_gb(acc.device)
                    running, interval, since = {}, 0, now
                    progress.update(task, loss=f"{values['loss']:.4f}")
                    if not self.console.is_terminal and acc.is_local_main_process:  # logs, batch jobs: plain lines
                        self.console.print(f"{i}-{cfg.name} step {done}/{cfg.steps} "
                                           + " ".join(f"{k} {v:.4g}" for k, v in values.items()))
                    acc.log({f"{cfg.name}/{k}": v for k, v in values.items()}, step=self.global_step)
                if checkpoint_now:
                    self.save_checkpoint(i, cfg, done, model, schedule, ema)
        if ema is not None:
            ema.copy_to(params)
        acc.wait_for_everyone()
        trained = acc.unwrap_model(wrapped)
        self._check_weights(trained, i, cfg, cfg.steps)
        acc.free_memory()
        return trained

    def log_evaluation(self, result: dict) -> None:
        """Evaluation metrics and the sample grid to the trackers (tensorboard, wandb)."""
        acc = self.accelerator
        if not self.recipe.run.log_with:
            return
        acc.log({f"eval/{method}/{k}": v for method, row in result["mean"].items() for k, v in row.items()
                 if v is not None}, step=self.global_step)
        grid = self.out / "eval" / "samples.png"
        if grid.is_file():
            image = np.asarray(Image.open(grid).convert("RGB"))
            for tracker in acc.trackers:  # the two trackers take images in different shapes
                if tracker.name == "tensorboard":
                    tracker.log_images({"eval/samples": image[None]}, step=self.global_step, dataformats="NHWC")
                elif tracker.name == "wandb":
                    tracker.log_images({"eval/samples": [image]}, step=self.global_step)

    def _check_finite(self, values: dict[str, float], i: int, cfg: StageConfig, step: int) -> None:
        """Stop at the first non-finite loss (checked once per log interval, with the logs' host sync), before a
        checkpoint or a published model can hold the damage."""
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise self._diverged(i, cfg, f"{', '.join(bad)} became non-finite by step {step} (logged every "
                                         f"{self.recipe.run.log_every} steps and before every checkpoint)")

    def _check_weights(self, model, i: int, cfg: StageConfig, step: int) -> None:
        """Stop when the weights hold NaN or infinity (the last update can break them after the last loss was
        logged): checked before every checkpoint and before the stage is saved."""
        bad = nonfinite_tensors(model)
        if bad:
            raise self._diverged(i, cfg, f"the weights became non-finite by step {step} ({name_tensors(bad)})")

    def _diverged(self, i: int, cfg: StageConfig, what: str) -> NonFiniteLoss:
        good = self._find_checkpoint(i, cfg) if self.recipe.run.resume != "never" else None  # finite weights only
        return NonFiniteLoss(
            f"stage {i} ({cfg.name}): {what}; nothing of it was saved. "
            + (f"The last checkpoint with finite weights is {good}; lower stages[{i}].lr or set max_grad_norm and "
               "resume." if good else f"No checkpoint of this stage has finite weights; lower stages[{i}].lr or set "
               "max_grad_norm and run it again."))

    def save_checkpoint(self, i: int, cfg: StageConfig, step: int, model, schedule, ema) -> None:
        self._check_weights(model, i, cfg, step)
        acc, root = self.accelerator, self.checkpoint_root(i, cfg)
        final = root / f"step-{step:08d}"
        tmp = partial_sibling(final)
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            torch.save(schedule.state_dict(), tmp / "lr_scheduler.pt")
            if ema is not None:
                torch.save(ema.state_dict(), tmp / "ema.pt")
            model.save_config(tmp)
            (self.process if cfg.type == "teacher" else self.student_process).save_config(tmp)
            state = {"stage_index": i, "stage_name": cfg.name, "stage_type": cfg.type, "stage_step": step,
                     "stage_steps": cfg.steps, "global_step": self.global_step, "recipe": self.recipe.source,
                     "fingerprint": self.fingerprints[i]}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            write_checksums(tmp)
            replace_folder(tmp, final)
            for old in sorted(root.glob("step-*"))[: -self.recipe.run.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
