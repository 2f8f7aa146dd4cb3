"""Does distillation transfer knowledge? A fixed-budget comparison of binarized students against their teacher.

On the quickstart's setting (bundled scikit-image photos, 48x48 patches, the ResShift process with residual x0
prediction, quickstart-sized networks) it trains the full-precision twin teacher once, then binarized students from
the twin's weights for the same number of steps each:

| row                       | stages (all students start from the twin's weights)                          |
| ------------------------- | ---------------------------------------------------------------------------- |
| student, direct only      | `direct`: the process loss alone                                             |
| student + SPD             | `feature_distill`: the process loss + spd_weight x SPD against the twin      |
| student + SPD + output    | `feature_distill`: as above + output_weight x the process loss to the twin's output (the quickstart's stage) |
| one-step student          | `one_step`: one evaluation from x_T matched to the twin's deterministic 15-step sampler (BiMaCoSR's objective) |
| BiDM student (TBS) + SPD + output | as "student + SPD + output" with BiDM's conv (`bidm`) and cross-timestep connection (4 of the 6 decoder blocks, BiDM's 2/3) |
| BiDM conv only + SPD + output     | the same without the cross-timestep connection (which part helps) |
| BiMaCoSR student + SPD + output   | as "student + SPD + output" with BiMaCoSR's layer (`bimacosr`: + sparse and low-rank FP branches) |
| one-step BiMaCoSR student | as "one-step student" with BiMaCoSR's layer: its paper's design and objective together |

and evaluates every model on Set5 x4 (full images, the benchmark's own LR files) with PSNR/SSIM on Y, LPIPS-alex and
seconds per image on this machine. Nothing is tuned to the table: the settings are the quickstart's.

    python benchmarks/distillation.py [--teacher-steps 800] [--student-steps 400] [--one-step-steps 150]
        [--lpips-backbone ../shared/weights/alexnet_features_imagenet1k_v1.pth] [--out runs/bench_distillation]

About 25 minutes on 2 CPU cores with the defaults. Runs already finished in `--out` are reused (an interrupted
benchmark continues where it stopped): after changing the code, delete that folder or give a new `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.quickstart_recipe import ROOT, quickstart_recipe  # noqa: E402
from pipeline.data import load_validation  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.metrics import LPIPSUnavailable, load_lpips  # noqa: E402
from pipeline.trainer import Trainer  # noqa: E402
from teachers import load_teacher  # noqa: E402

SHARED = ROOT.parent / "shared"


def stage(kind: str, steps: int, **extra) -> str:
    lines = [f'[[stages]]\ntype = "{kind}"\nsteps = {steps}\nbatch_size = 8\nlr = 5e-4\nlr_schedule = "cosine"\n'
             "warmup_steps = 20\n"]
    lines += [f"{k} = {v}\n" for k, v in extra.items()]
    return "".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--student-steps", type=int, default=400)
    parser.add_argument("--one-step-steps", type=int, default=150)
    parser.add_argument("--lpips-backbone", default=os.environ.get(
        "BIDISTILL_LPIPS_ALEX", str(SHARED / "weights" / "alexnet_features_imagenet1k_v1.pth")))
    parser.add_argument("--val", default=str(SHARED / "data" / "Set5"))
    parser.add_argument("--val-lr", default=str(SHARED / "data" / "Set5_LR_bicubic" / "X4"))
    parser.add_argument("--out", default="runs/bench_distillation")
    args = parser.parse_args(argv)
    console, out = Console(), Path(args.out)

    teacher_stage = (f'[[stages]]\ntype = "teacher"\nsteps = {args.teacher_steps}\nbatch_size = 8\nlr = 1e-3\n'
                     'lr_schedule = "cosine"\nwarmup_steps = 50\nema_decay = 0.995\n')
    Trainer(quickstart_recipe(out / "teacher", teacher_stage, init_from_teacher=False)).run()
    teacher_dir = str((out / "teacher" / "teacher").resolve())
    n = args.student_steps
    distil = stage("feature_distill", n, spd_weight=0.1, output_weight=1.0)
    one_step = stage("one_step", args.one_step_steps)
    bidm = ['student.unet.binarizer="bidm"', "student.unet.cross_timestep_blocks=4"]
    bimacosr = ['student.unet.binarizer="bimacosr"']
    runs = {  # label: (stages, recipe overrides)
        "student, direct only": (stage("direct", n), []),
        "student + SPD": (stage("feature_distill", n, spd_weight=0.1, output_weight=0.0), []),
        "student + SPD + output": (distil, []),
        "one-step student": (one_step, []),
        "BiDM student (TBS) + SPD + output": (distil, bidm),
        "BiDM conv only + SPD + output": (distil, bidm[:1]),
        "BiMaCoSR student + SPD + output": (distil, bimacosr),
        "one-step BiMaCoSR student": (one_step, bimacosr),
    }
    students = {}
    for i, (label, (stages, overrides)) in enumerate(runs.items()):
        trainer = Trainer(quickstart_recipe(out / f"student_{i}", stages, overrides, teacher_path=teacher_dir))
        trainer.run()
        students[label] = (trainer.student.eval(), trainer.student_process)

    try:
        lpips_model = load_lpips(args.lpips_backbone or None)
    except LPIPSUnavailable as err:
        console.print(f"[yellow]LPIPS column left out: {err}[/yellow]")
        lpips_model = None
    images = load_validation(args.val, 4, args.val_lr)
    quiet = Console(quiet=True)
    teacher = load_teacher(teacher_dir)
    result = evaluate(images, 4, None, teacher, lpips_model=lpips_model, console=quiet)
    rows = {m: (result["mean"][m], None) for m in ("bicubic", "condition")}
    rows["FP twin teacher (15 steps)"] = (result["mean"]["teacher"], result["seconds_per_image"]["teacher"])
    for label, (student, process) in students.items():
        r = evaluate(images, 4, student, None, student_process=process, lpips_model=lpips_model, console=quiet)
        rows[label] = (r["mean"]["student"], r["seconds_per_image"]["student"])

    metrics = result["metrics"]
    table = Table(title=f"Set5 x4 ({len(images)} images; teacher {args.teacher_steps} steps, students {n} steps, "
                        f"one-step {args.one_step_steps}; batch 8 of 48x48 patches, CPU)")
    table.add_column("model")
    for k in metrics:
        table.add_column(k.upper(), justify="right")
    table.add_column("s / image", justify="right")
    for label, (mean, seconds) in rows.items():
        table.add_row(label, *(f"{mean[k]:.2f}" if k == "psnr" else f"{mean[k]:.4f}" for k in metrics),
                      "-" if seconds is None else f"{seconds:.2f}")
    console.print(table)
    (out / "table.json").write_text(json.dumps({k: {"mean": m, "seconds_per_image": s} for k, (m, s) in rows.items()},
                                               indent=2))


if __name__ == "__main__":
    main()
