"""What a run has saved and may reuse: finished stages and checkpoints, written whole and checked before reuse.

    stages/<i>-<name>/            the model after stage i (save_pretrained; EMA weights when EMA is on) and the
                                  fingerprint of the recipe parts that made it. Its presence marks the stage complete
                                  for that recipe only.
    checkpoints/<i>-<name>/step-N accelerate's save_state (model.safetensors, optimizer, RNG) + LR schedule, EMA,
                                  trainer_state.json and the model config.

Both are written to a temporary folder and renamed, so a kill at any moment leaves only complete ones; both carry
checksums, so a damaged one is named and skipped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from rich.console import Console
from safetensors.torch import load_file

from pipeline.atomic import folder_written_whole, partial_sibling, replace_folder
from pipeline.publish import files_not_published
from pipeline.run_folder import RunFolderError, check_fingerprint, read_fingerprint, write_fingerprint
from pipeline.stages import StageConfig
from students.checksums import damage, write_checksums
from students.finite import name_tensors, nonfinite_tensors
from teachers.process import DiffusionProcess


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss or weights; the message names the stage, the step and the last
    checkpoint whose weights are all finite (or says there is none)."""


def nonfinite_checkpoint(folder: Path) -> str:
    """Why a checkpoint's model must not be resumed from ('' when its weights are all finite)."""
    weights = folder / "model.safetensors"
    bad = nonfinite_tensors(load_file(weights)) if weights.is_file() else []
    return f"{weights} holds NaN or infinite weights ({name_tensors(bad)})" if bad else ""


class StageStore:
    """The finished stages and checkpoints of one run folder, for a recipe's stages and fingerprints."""

    def __init__(self, out: Path, stages: list[StageConfig], fingerprints: list[dict], resume: str,
                 keep_checkpoints: int, accelerator: Accelerator, console: Console):
        self.out, self.stages, self.fingerprints = Path(out), stages, fingerprints
        self.resume, self.keep_checkpoints = resume, keep_checkpoints
        self.accelerator, self.console = accelerator, console
        self._checkpoints: dict[int, Path | None] = {}
        self._complete: dict[int, bool] = {}

    def stage_dir(self, i: int) -> Path:
        return self.out / "stages" / f"{i}-{self.stages[i].name}"

    def checkpoint_root(self, i: int) -> Path:
        return self.out / "checkpoints" / f"{i}-{self.stages[i].name}"

    def find_checkpoint(self, i: int) -> Path | None:
        """The checkpoint stage i resumes from: the newest intact one (a damaged one is named and skipped); one
        made by another recipe is a RunFolderError. Found once per run (the up-front check) and remembered."""
        if i not in self._checkpoints:
            self._checkpoints[i] = self.newest_good_checkpoint(i)
        return self._checkpoints[i]

    def newest_good_checkpoint(self, i: int) -> Path | None:
        """`find_checkpoint` looked up afresh (after training wrote more)."""
        if self.resume == "never":
            return None
        if self.resume != "latest":
            path = Path(self.resume)
            why = damage(path)
            if why:
                raise RunFolderError(f"run.resume names a damaged checkpoint: {why}")
            state = json.loads((path / "trainer_state.json").read_text())
            if state["stage_index"] != i:
                return None
            check_fingerprint(state.get("fingerprint"), self.fingerprints[i], f"checkpoint {path}", f"stages[{i}]")
            return path
        root = self.checkpoint_root(i)
        candidates = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
        for found in candidates:
            why = damage(found) or nonfinite_checkpoint(found)
            if why:
                self.console.print(f"[yellow]skipping checkpoint {found}: {why}[/yellow]")
                continue
            state = json.loads((found / "trainer_state.json").read_text())
            check_fingerprint(state.get("fingerprint"), self.fingerprints[i], f"checkpoint {found}", f"stages[{i}]")
            if found != candidates[0]:
                self.console.print(f"[yellow]resuming from the newest intact checkpoint, {found}[/yellow]")
            return found
        if candidates:
            self.console.print(f"[yellow]no intact checkpoint of stage {i} ({self.stages[i].name}): it starts "
                               "again[/yellow]")
        return None

    def stage_complete(self, i: int) -> bool:
        """A finished stage counts only for the recipe that made it (else a RunFolderError saying what changed).
        Checked once per run (the up-front check, which hashes its files) and remembered."""
        if i not in self._complete:
            self._complete[i] = self._stage_complete(i)
        return self._complete[i]

    def _stage_complete(self, i: int) -> bool:
        done, name = self.stage_dir(i), self.stages[i].name
        if self.resume == "never" or not done.is_dir():
            return False
        why = damage(done)
        if why:
            raise RunFolderError(f"stage {i} ({name}) is damaged: {why}. Delete {done} to train it again from "
                                 "its newest intact checkpoint")
        check_fingerprint(read_fingerprint(done), self.fingerprints[i], f"stage {i} ({name}) in {done}",
                          f"stages[{i}]")
        return True

    def check_earlier_work(self) -> None:
        """Before anything trains: every finished stage and newest checkpoint in the folder must be this recipe's,
        and the published folder, which a run replaces whole, must hold nothing a user added."""
        for i in range(len(self.stages)):
            if not self.stage_complete(i):
                self.find_checkpoint(i)
        added = files_not_published(self.out / "publish")
        if added:
            raise RunFolderError(f"{self.out / 'publish'} holds files no publish wrote ({', '.join(added[:3])}); "
                                 "this run replaces that folder whole: move them out first")

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

    def save_checkpoint(self, i: int, step: int, model, process: DiffusionProcess, schedule, ema,
                        global_step: int, recipe_source: str) -> None:
        """Save stage i's training state at `step`, whole or not at all (every process takes part).

        Args:
            model, schedule, ema: the unwrapped model (its config is saved beside accelerate's state), the LR
                schedule and the EMA (or None).
            process: the process the model trains on (its config is saved too).
            global_step, recipe_source: recorded in trainer_state.json with the stage's fingerprint.
        """
        cfg, acc, root = self.stages[i], self.accelerator, self.checkpoint_root(i)
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
            process.save_config(tmp)
            state = {"stage_index": i, "stage_name": cfg.name, "stage_type": cfg.type, "stage_step": step,
                     "stage_steps": cfg.steps, "global_step": global_step, "recipe": recipe_source,
                     "fingerprint": self.fingerprints[i]}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            write_checksums(tmp)
            replace_folder(tmp, final)
            for old in sorted(root.glob("step-*"))[: -self.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
