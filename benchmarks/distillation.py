"""Does distillation pay? 1-bit students trained with and without their teacher at equal budget, with paired
confidence intervals.

The teacher is the quickstart's full-precision twin on the ResShift process, trained once (12,000 steps) on the
bundled photos plus Set14 and cached in `--out` with its fingerprint; its PSNR is also measured at every 3,000-step
checkpoint (the curve). Every student row then trains the same binarized BI-DiffSR student for the same steps, batch,
patch, lr schedule and seeds (one run per seed), differing only in its start and objective:

| row                                  | start  | objective |
| ------------------------------------ | ------ | --------- |
| random init + direct                 | random | the process loss to the data (BI-DiffSR's training) |
| twin init + direct (reference)       | twin   | the same |
| twin init + direct + output          | twin   | + the process loss to the teacher's output on the same (x_t, y, t) |
| ... + SPD 0.1 / + SPD 1              | twin   | + BiDM's Space Patched Distillation on the twin's res-block features |
| twin init + teacher target           | twin   | the process loss to the teacher's output alone (`direct_weight = 0`) |
| one-step (BiMaCoSR's objective)      | twin   | one step from x_T matched to the teacher's deterministic sampler |
| BiDM / BiMaCoSR designs             | twin   | the best objective above (highest lower bound), their layers |
| ... at twice the steps (`--budget`)  | twin   | the reference and the best objective at 2x the budget, compared |

Every model is scored on images no model trained on: Set5 (its own x4 LR files) and the two held-out bundled photos,
all full size (tiled sampling, 15 steps; the same sampling noise for every model), PSNR/SSIM on Y and LPIPS-alex.
Each row shows its mean over images and seeds and, against "twin init + direct", the mean paired per-image
difference with a 95% bootstrap interval over images and seeds (`benchmarks/paired_stats.py`).

    python benchmarks/distillation.py [--student-steps 800] [--seeds 2] [--budget] [--out runs/bench_distillation]
        [--lpips-backbone ../shared/weights/alexnet_features_imagenet1k_v1.pth] [--quick]

Resumable: the teacher, every student run and every score are reused when their fingerprint (recipe, model,
process, data, images, sampling) is unchanged, so an interrupted study continues where it stopped (after changing
the code, give a new `--out`). About 27 minutes for the teacher and 80 for the 10 rows x 2 seeds on 2 CPU cores.
`--quick` is a smoke run of the machinery (one row of each kind, tiny budgets, two crops; the tests run it): its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from benchmarks.paired_stats import paired_difference  # noqa: E402
from benchmarks.study_setup import (SHARED, TEACHER_STEPS, held_out_images, study_recipe, teacher_stage,  # noqa: E402
                                    training_folder)
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.metrics import LPIPSUnavailable, load_lpips  # noqa: E402
from pipeline.trainer import Trainer  # noqa: E402
from students.bidiffsr import BiDiffSRUNet  # noqa: E402
from teachers import load_teacher  # noqa: E402
from teachers.base import Teacher  # noqa: E402
from teachers.process import load_process  # noqa: E402

REFERENCE = "twin_direct"  # the row the others are compared with


@dataclass
class Row:
    slug: str
    label: str
    stage_type: str
    losses: dict = field(default_factory=dict)  # feature_distill weights
    overrides: list = field(default_factory=list)
    init_from_teacher: bool = True
    steps_factor: int = 1
    reference: str = REFERENCE  # the row its paired difference is taken against

    def stages(self, steps: int, one_step_steps: int) -> str:
        n = (one_step_steps if self.stage_type == "one_step" else steps) * self.steps_factor
        lines = [f'[[stages]]\ntype = "{self.stage_type}"\nsteps = {n}\nbatch_size = 8\nlr = 5e-4\n'
                 f'lr_schedule = "cosine"\nwarmup_steps = {min(20, n)}\n']
        return "".join(lines + [f"{k} = {v}\n" for k, v in self.losses.items()])


OBJECTIVES = [
    Row("random_direct", "random init + direct", "direct", init_from_teacher=False),
    Row(REFERENCE, "twin init + direct (reference)", "direct"),
    Row("twin_output", "twin init + direct + output", "feature_distill", {"spd_weight": 0.0, "output_weight": 1.0}),
    Row("twin_output_spd0.1", "twin init + direct + output + SPD 0.1", "feature_distill",
        {"spd_weight": 0.1, "output_weight": 1.0}),
    Row("twin_output_spd1", "twin init + direct + output + SPD 1", "feature_distill",
        {"spd_weight": 1.0, "output_weight": 1.0}),
    Row("twin_teacher_target", "twin init + teacher target", "feature_distill",
        {"spd_weight": 0.0, "output_weight": 1.0, "direct_weight": 0.0}),
    Row("one_step", "twin init + one-step (BiMaCoSR's objective)", "one_step"),
]
QUICK_ROWS = (REFERENCE, "twin_output", "one_step")
DESIGNS = {  # design rows: the best objective with another layer design
    "bidm": ("BiDM design (TBS)", ['student.unet.binarizer="bidm"', "student.unet.cross_timestep_blocks=4"]),
    "bimacosr": ("BiMaCoSR design (official unit)", ['student.unet.binarizer="bimacosr"']),
    "bimacosr_inside": ("BiMaCoSR design (branches inside the activation)",
                        ['student.unet.binarizer="bimacosr_inside"']),
}


def design_rows(best: Row) -> list[Row]:
    rows = []
    for slug, (label, overrides) in DESIGNS.items():
        if best.stage_type == "one_step":  # no cache across sampling steps in a one-step student
            overrides = [o for o in overrides if "cross_timestep" not in o]
        rows.append(Row(f"{slug}+{best.slug}", f"{label}, {best.label.split(' + ', 1)[-1]}", best.stage_type,
                        best.losses, overrides))
    return rows


def budget_rows(best: Row) -> list[Row]:
    """The reference and the best objective at twice the steps, the latter compared with the former: does the
    advantage grow with the budget?"""
    doubled = Row(f"{REFERENCE}_x2", "twin init + direct, 2x steps", "direct", steps_factor=2)
    return [doubled, Row(f"{best.slug}_x2", f"{best.label}, 2x steps (vs direct at 2x)", best.stage_type, best.losses,
                         best.overrides, best.init_from_teacher, steps_factor=2, reference=doubled.slug)]


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Study:
    def __init__(self, args, console: Console):
        self.args, self.console, self.out = args, console, Path(args.out)
        self.train, held_out = training_folder(self.out)
        self.images = held_out_images(held_out, crop=64 if args.quick else 0)
        try:
            self.lpips = load_lpips(args.lpips_backbone or None)
        except LPIPSUnavailable as err:
            console.print(f"[yellow]LPIPS left out: {err}[/yellow]")
            self.lpips = None
        self.image_key = [(im.name, tuple(im.hr.shape)) for im in self.images]
        self.scores: dict[str, list[dict]] = {}  # slug -> one evaluation per seed

    def cached_score(self, name: str, key: str, compute) -> dict:
        path = self.out / "scores" / f"{name}.json"
        if path.is_file():
            found = json.loads(path.read_text())
            if found.get("key") == key:
                return found
        result = {"key": key, **compute()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
        return result

    def score(self, student=None, teacher=None, process=None) -> dict:
        result = evaluate(self.images, 4, student, teacher, student_process=process, lpips_model=self.lpips,
                          console=Console(quiet=True))
        return {"per_image": result["per_image"], "seconds_per_image": result["seconds_per_image"]}

    # ---- the teacher ----------------------------------------------------------------------------------------
    def teacher(self) -> str:
        steps = 40 if self.args.quick else TEACHER_STEPS
        trainer = Trainer(study_recipe(self.out / "teacher", teacher_stage(steps), self.train, init_from_teacher=False))
        trainer.run()
        folder = self.out / "teacher" / "teacher"
        stage_key = key_of(trainer.fingerprints[-1], self.image_key)
        self.scores["teacher"] = [self.cached_score("teacher", stage_key,
                                                    lambda: self.score(teacher=load_teacher(folder)))]
        curve = []
        for checkpoint in sorted((self.out / "teacher" / "checkpoints").glob("*/step-*")):
            step = int(checkpoint.name.split("-")[1])
            result = self.cached_score(f"teacher-step{step}", key_of(stage_key, step),
                                       lambda: self.score(teacher=checkpoint_teacher(checkpoint)))
            curve.append((step, result))
        self.curve = curve + [(steps, self.scores["teacher"][0])]
        return str(folder.resolve())

    # ---- the students ---------------------------------------------------------------------------------------
    def run_row(self, row: Row, teacher_dir: str) -> None:
        a = self.args
        steps, one_step = (6, 2) if a.quick else (a.student_steps, a.one_step_steps)
        results = []
        for seed in range(1, a.seeds + 1):
            recipe = study_recipe(self.out / "students" / f"{row.slug}-seed{seed}", row.stages(steps, one_step),
                                  self.train, [*row.overrides, f"run.seed={seed}"], teacher_path=teacher_dir,
                                  init_from_teacher=row.init_from_teacher)
            trainer = Trainer(recipe)

            def train_and_score():
                start = time.perf_counter()
                trainer.run()
                seconds = time.perf_counter() - start
                return {**self.score(trainer.student.eval(), process=trainer.student_process),
                        "train_seconds": seconds}

            results.append(self.cached_score(f"{row.slug}-seed{seed}", key_of(trainer.fingerprints[-1],
                                                                               self.image_key), train_and_score))
        self.scores[row.slug] = results
        self.console.print(f"[green]{row.label}[/green]: PSNR {self.matrix(row.slug, 'psnr').mean():.3f}")

    def matrix(self, slug: str, metric: str, method: str = "student") -> np.ndarray:
        """(seeds, images) of one metric."""
        method = "teacher" if slug == "teacher" else method
        return np.array([[im[method][metric] for im in run["per_image"]] for run in self.scores[slug]])

    def gain(self, row: Row, metric: str = "psnr") -> tuple[float, float, float]:
        return paired_difference(self.matrix(row.slug, metric), self.matrix(row.reference, metric))

    # ---- the table --------------------------------------------------------------------------------------------
    def report(self, rows: list[Row], best: Row) -> None:
        metrics = ["psnr", "ssim"] + (["lpips"] if self.lpips is not None else [])
        fmt = {"psnr": "{:.2f}", "ssim": "{:.4f}", "lpips": "{:.4f}"}
        teacher_runs = self.scores["teacher"]
        base = {m: {k: float(np.mean([im[m][k] for im in teacher_runs[0]["per_image"]])) for k in metrics}
                for m in ("bicubic", "condition", "teacher")}
        header = ["model", *[k.upper() for k in metrics], "dPSNR vs reference [95% CI]", "dLPIPS [95% CI]",
                  "s / image", "train s"]
        lines = []
        for m, label in (("bicubic", "bicubic (MATLAB)"), ("condition", "condition (the models' input)"),
                         ("teacher", f"FP twin teacher ({TEACHER_STEPS if not self.args.quick else 40} steps)")):
            seconds = teacher_runs[0]["seconds_per_image"].get("teacher") if m == "teacher" else None
            lines.append([label, *[fmt[k].format(base[m][k]) for k in metrics], "", "",
                          "-" if seconds is None else f"{seconds:.2f}", ""])
        for row in rows:
            mean = {k: self.matrix(row.slug, k).mean() for k in metrics}
            cells = ["-", "-"]
            if row.slug != row.reference:
                d, lo, hi = self.gain(row)
                cells[0] = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                if self.lpips is not None:
                    d, lo, hi = self.gain(row, "lpips")
                    cells[1] = f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            runs = self.scores[row.slug]
            lines.append([row.label + (" *" if row.slug == best.slug else ""),
                          *[fmt[k].format(mean[k]) for k in metrics], *cells,
                          f"{np.mean([r['seconds_per_image']['student'] for r in runs]):.2f}",
                          f"{np.mean([r['train_seconds'] for r in runs]):.0f}"])
        curve = " | ".join(f"{step}: {np.mean([im['teacher']['psnr'] for im in r['per_image']]):.2f}"
                           for step, r in self.curve)
        title = (f"{len(self.images)} held-out images (Set5 + 2 bundled photos, full size), x4, {self.args.seeds} "
                 f"seeds per row; students {self.args.student_steps} steps (one-step {self.args.one_step_steps}), "
                 "batch 8 of 48x48 patches; * = best objective")
        table = Table(title=title, caption=f"teacher PSNR by training step: {curve}")
        for h in header:
            table.add_column(h, justify="left" if h == "model" else "right")
        for line in lines:
            table.add_row(*line)
        self.console.print(table)
        markdown = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        markdown += ["| " + " | ".join(line) + " |" for line in lines]
        table_md = f"{title}\n\n" + "\n".join(markdown) + f"\n\nTeacher PSNR by step: {curve}\n"
        (self.out / "table.md").write_text(table_md)
        (self.out / "table.json").write_text(json.dumps(
            {"header": header, "rows": lines, "teacher_curve": [[s, r["per_image"]] for s, r in self.curve],
             "scores": self.scores}, indent=1))


def checkpoint_teacher(folder: Path) -> Teacher:
    """The EMA weights of a teacher-stage checkpoint as a teacher (the stage's result at that step)."""
    model = BiDiffSRUNet.from_config(BiDiffSRUNet.load_config(folder))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    shadow = torch.load(folder / "ema.pt", weights_only=True)["shadow_params"]
    with torch.no_grad():
        for p, s in zip(model.parameters(), shadow, strict=True):
            p.copy_(s)
    return Teacher(model, load_process(folder), scale=4)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student-steps", type=int, default=800)
    parser.add_argument("--one-step-steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lpips-backbone", default=os.environ.get(
        "BIDISTILL_LPIPS_ALEX", str(SHARED / "weights" / "alexnet_features_imagenet1k_v1.pth")))
    parser.add_argument("--out", default="")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, two 64x64 crops")
    parser.add_argument("--objectives-only", action="store_true", help="stop after the objective rows")
    parser.add_argument("--budget", action="store_true",
                        help="add the reference and the best objective at twice the steps (about 25 minutes more)")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: the intervals resample seeds")
    args.out = args.out or ("runs/bench_distillation_quick" if args.quick else "runs/bench_distillation")
    console = Console()
    study = Study(args, console)
    teacher_dir = study.teacher()
    # the smoke run keeps one row of each kind: it checks the machinery, not the methods
    objectives = [r for r in OBJECTIVES if not args.quick or r.slug in QUICK_ROWS]
    for row in objectives:
        study.run_row(row, teacher_dir)
    # best = the objective that most surely beats direct training: the highest lower bound of its interval
    best = max((r for r in objectives if r.slug != REFERENCE), key=lambda r: study.gain(r)[1])
    rows = list(objectives)
    if not args.objectives_only:
        more = design_rows(best)[1:2] if args.quick else design_rows(best)
        for row in more + (budget_rows(best) if args.budget or args.quick else []):
            study.run_row(row, teacher_dir)
            rows.append(row)
    study.report(rows, best)


if __name__ == "__main__":
    main()
