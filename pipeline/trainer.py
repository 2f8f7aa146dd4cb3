"""The staged trainer: runs a recipe's stages in order on Hugging Face Accelerate.

One Accelerator for the run (DDP across processes, fp16/bf16 mixed precision, gradient accumulation, trackers);
each stage gets a fresh optimizer (Adam), LR schedule (diffusers' get_scheduler), optional EMA (diffusers'
EMAModel) and gradient clipping. Model state flows from stage to stage.

Outputs under run.output_dir, a folder the run claims first (`pipeline.run_folder`: it must be new, empty or an
earlier run's, and it is locked for the run's life): stages/ and checkpoints/ (`pipeline.checkpoints`), student/ and
teacher/ (the final models), eval/ (metrics.json + samples.png), logs/ (tensorboard), publish/ (the diffusers-format
folder, packed 1-bit file and model card of `pipeline.publish`, pushed to publish.push_to_hub when set).

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
import resource
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text
from torch.utils.data import DataLoader

from pipeline.builtin_data import export_skimage
from pipeline.checkpoints import NonFiniteLoss, StageStore
from pipeline.data import (PatchDataset, StepBatchSampler, load_hr_dataset, load_lr_images, load_validation, make_pairs,
                           seed_of)
from pipeline.degradations import degraded_validation
from pipeline.evaluate import evaluate
from pipeline.loading import load_student
from pipeline.metrics import LPIPSUnavailable, load_lpips
from pipeline.preflight import CheckedRecipe, preflight
from pipeline.publish import push_folder, write_model_folder
from pipeline.recipe import Recipe
from pipeline.resize import upsample_cond
from pipeline.run_folder import RunFolder, stage_fingerprints
from pipeline.run_models import initial_student, new_teacher, ready_teacher
from pipeline.stages import Stage, StageConfig
from pipeline.trackers import log_evaluation, tracker_config
from students.checksums import sha256_file
from students.finite import name_tensors, nonfinite_tensors
from teachers import load_teacher

__all__ = ["NonFiniteLoss", "Trainer"]


class StepsPerSecond(ProgressColumn):
    """Training speed in the progress bar."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} it/s" if task.speed else "- it/s", style="progress.data.speed")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:  # this process's own peak: ru_maxrss also counts the parent's when a large process started this one
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**20  # KiB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)


class Trainer:
    """Runs a recipe; `checked` is its pre-flight result (`pipeline.preflight`), made here when not given."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator | None = None, checked: CheckedRecipe | None = None):
        self.recipe = recipe
        self.checked = checked if checked is not None else preflight(recipe)
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
            self.console.print("[yellow]warning: the launcher was asked for several processes but runs one "
                               "(`accelerate launch --cpu --num_processes N` does that); for N CPU processes use "
                               "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N`[/yellow]")
        self.global_step = 0
        self._pairs = None
        self.process = self.checked.process  # teacher and student live on it
        self.student_process = self.process  # becomes the one-step variant after a one_step stage
        self.student_config = self.checked.student_config
        self.fingerprints = stage_fingerprints(recipe, self.process, self.student_config,
                                               self.accelerator.mixed_precision)
        self.degradation = self.checked.degradation  # None: the data's bicubic LR
        self.store = StageStore(self.out, recipe.stages, self.fingerprints, r.resume, r.keep_checkpoints,
                                self.accelerator, self.console)

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
            patch = max(s.patch(d.patch_size) for s in self.recipe.stages)
            with self.accelerator.main_process_first():  # the main process builds the datasets cache first
                ds = load_hr_dataset(d.train, d.train_hub, d.train_split, d.image_column)
                self._pairs = make_pairs(ds, self.recipe.run.scale, patch, d.image_column, d.train or d.train_hub,
                                         num_proc=d.num_proc)
        return self._pairs

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
            self.store.check_earlier_work()
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
        for i, cfg in enumerate(r.stages):
            if self.store.stage_complete(i):
                state = "finished (reused)"
            elif (checkpoint := self.store.find_checkpoint(i)) is not None:
                state = f"resumes from {checkpoint.name}"
            else:
                state = "new"
            table.add_row(f"{i}-{cfg.name}", cfg.type, str(cfg.steps), str(cfg.batch_size),
                          str(cfg.batch_size * cfg.grad_accum * acc.num_processes), f"{cfg.lr:g}", state)
        self.console.print(table)
        self.console.print(f"processes {acc.num_processes} | device {acc.device} | precision {acc.mixed_precision}"
                           f"{' (from the launcher)' if not r.run.mixed_precision else ''} | process "
                           f"{self.process.name} | output {self.out} | resume {r.run.resume}")

    def _run(self) -> dict | None:
        acc, recipe = self.accelerator, self.recipe
        if acc.is_main_process:
            (self.out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        if recipe.run.log_with:
            acc.init_trackers(recipe.run.name, config=tracker_config(recipe))
        self.resolve_builtin_data()
        store, device = self.store, acc.device
        teacher, student = None, None
        if recipe.teacher.path:
            teacher = ready_teacher(load_teacher(recipe.teacher.path), self.checked, device)
        for i, cfg in enumerate(recipe.stages):
            done = store.stage_dir(i)
            if store.stage_complete(i):
                self.console.print(f"[dim]stage {i} ({cfg.name}) already complete: {done}[/dim]")
                self.global_step += cfg.steps
                if cfg.trains_teacher:
                    teacher = ready_teacher(load_teacher(done), self.checked, device)
                else:
                    student, self.student_process = load_student(done)
            elif cfg.trains_teacher:
                teacher = new_teacher(self.checked)
                trained = self.train_stage(i, cfg.build(self.process, teacher.unet, None), teacher.unet, self.process)
                teacher.register_modules(unet=trained)
                store.save_stage(teacher, done, fingerprint=self.fingerprints[i])
                teacher = ready_teacher(teacher, self.checked, device)
            else:
                student = student if student is not None else initial_student(self.checked, teacher, self.console)
                self.student_process = cfg.student_process(self.process) or self.student_process
                stage = cfg.build(self.student_process, student, teacher)
                student = self.train_stage(i, stage, student, self.student_process)
                store.save_stage(student, done, self.student_process, fingerprint=self.fingerprints[i])

        self.student, self.teacher = student, teacher
        acc.wait_for_everyone()
        if acc.is_main_process:
            if student is not None:
                store.save_stage(student, self.out / "student", self.student_process)
            if teacher is not None and not recipe.teacher.path:
                store.save_stage(teacher, self.out / "teacher")
        result = None
        if acc.is_main_process and recipe.data.val and recipe.eval.enabled:
            result = self.evaluate(student, teacher)
            if recipe.run.log_with:
                log_evaluation(acc, result, self.out / "eval" / "samples.png", self.global_step)
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
        license = teacher.config.get("license", "") if teacher is not None else ""
        folder = write_model_folder(student.to("cpu"), self.student_process, self.recipe.run.scale,
                                    self.out / "publish", metrics=metrics, recipe=self.recipe.to_dict(),
                                    repo_id=p.push_to_hub, license=license)
        self.console.print(f"published folder: {folder}")
        if p.push_to_hub:
            url = push_folder(folder, p.push_to_hub, private=p.private)
            self.console.print(f"pushed to {p.push_to_hub}: {url}")

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
        record = {}
        if student is not None:
            record["student_sha256"] = sha256_file(self.out / "student" / SAFETENSORS_WEIGHTS_NAME)
        if teacher is not None and e.teacher:
            record["teacher_autocast"] = self.recipe.teacher.autocast
        return evaluate(images, self.recipe.run.scale, student, teacher if e.teacher else None,
                        student_process=self.student_process, num_inference_steps=e.num_inference_steps or None,
                        seed=e.seed, lpips_model=lpips_model,
                        out_dir=self.out / "eval", grid_images=e.grid_images, device=self.accelerator.device,
                        console=self.console, tile_size=e.tile_size or None, lpips_skipped=skipped, record=record)

    # ---- one stage ---------------------------------------------------------------------------------------------
    def train_stage(self, i: int, stage: Stage, model: torch.nn.Module, process) -> torch.nn.Module:
        """Train `model` through stage i with `stage`'s loss; `process` is the one its checkpoints record."""
        acc, run, cfg = self.accelerator, self.recipe.run, self.recipe.stages[i]
        patch = cfg.patch(self.recipe.data.patch_size)
        stage.check_patch(patch)
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
        checkpoint = self.store.find_checkpoint(i)
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

        dataset = PatchDataset(self.training_pairs(), patch, run.scale, seed=seed_of(run.seed, i))
        loader = DataLoader(
            dataset,
            batch_sampler=StepBatchSampler(cfg.batch_size, acc.process_index, acc.num_processes,
                                           start * cfg.grad_accum),
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
                    self._check_weights(model, i, cfg, done)
                    self.store.save_checkpoint(i, done, model, process, schedule, ema, self.global_step,
                                               self.recipe.source)
        if ema is not None:
            ema.copy_to(params)
        acc.wait_for_everyone()
        trained = acc.unwrap_model(wrapped)
        self._check_weights(trained, i, cfg, cfg.steps)
        acc.free_memory()
        return trained

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
        good = self.store.newest_good_checkpoint(i)  # finite weights only
        return NonFiniteLoss(
            f"stage {i} ({cfg.name}): {what}; nothing of it was saved. "
            + (f"The last checkpoint with finite weights is {good}; lower stages[{i}].lr or set max_grad_norm and "
               "resume." if good else f"No checkpoint of this stage has finite weights; lower stages[{i}].lr or set "
               "max_grad_norm and run it again."))
