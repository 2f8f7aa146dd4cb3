"""Do students learn? The two training defects of the first version, measured before and after their fixes.

1. The binary-weight gradient: "before" multiplies dL/dW_b * 1[|W| <= 1] by the scale alpha (W_b written as
   alpha * ClipSign(W)); "after" is the official estimator without alpha (`students.binary.scaled_sign_clip_ste`).
   Printed: the first Adam step's mean |dW| / lr over the binary latent weights and the share of them whose step is
   more than 50% off lr (Adam's first step is ~lr wherever the gradient clears eps), on the quickstart-sized student
   and on the paper-sized one (one 64x64 patch).
2. The x0 clip while sampling: "before" is the official [-1, 1] (it never binds on [0, 1] data), "after" the data
   range [0, 1] (`DDPMProcess(clip_sample=...)`).

A quickstart-sized twin teacher and binarized student (started from random weights, as the official recipe) are
trained on BI-DiffSR's DDPM process on the bundled scikit-image photos for a fixed budget, then sampled with 20-step
DDIM on the two held-out 128x128 crops; PSNR/SSIM on Y against the HR crops, next to bicubic.

    python benchmarks/learning.py [--teacher-steps 800] [--student-steps 500] [--out runs/bench_learning]

About 15 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import students.binarizers as binarizers  # noqa: E402
from pipeline.data import load_validation  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.trainer import Trainer  # noqa: E402
from benchmarks.quickstart_recipe import quickstart_recipe  # noqa: E402
from students.bidiffsr import BiDiffSRUNet  # noqa: E402
from students.binary import BinaryConv2d, ClipSign, channel_scale  # noqa: E402
from teachers import DDPMProcess, Teacher, training_loss  # noqa: E402

def _alpha_scaled_weight(w, conv):
    return channel_scale(w) * ClipSign.apply(w)  # the first version's estimator: gradient carries alpha


@contextmanager
def legacy_weight_gradient(enabled: bool):
    """Temporarily give the BI-DiffSR binarizer the first version's alpha-scaled weight gradient."""
    original = binarizers.BINARIZERS["bidiffsr"]
    if enabled:
        binarizers.BINARIZERS["bidiffsr"] = binarizers.Binarizer(
            "bidiffsr", original.quantize_input, _alpha_scaled_weight, learnable_shift=True, rprelu=True,
            timestep_aware=True)
    try:
        yield
    finally:
        binarizers.BINARIZERS["bidiffsr"] = original


def first_step_update(config: dict, patch: int, legacy: bool) -> tuple[float, float]:
    """(mean |dW| / lr, share of binary latent weights whose first Adam step is > 50% off lr)."""
    with legacy_weight_gradient(legacy):
        torch.manual_seed(0)
        model = BiDiffSRUNet(**config)
    weights = [m.weight for m in model.modules() if isinstance(m, BinaryConv2d)]
    before = [w.detach().clone() for w in weights]
    lr = 1e-4
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    hr, cond = torch.rand(1, 3, patch, patch), torch.rand(1, 3, patch, patch)
    training_loss(model, DDPMProcess(), hr, cond, torch.Generator().manual_seed(0)).backward()
    opt.step()
    steps = torch.cat([(w.detach() - b).abs().flatten() for w, b in zip(weights, before)]) / lr
    return steps.mean().item(), ((steps - 1).abs() > 0.5).float().mean().item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--student-steps", type=int, default=500)
    parser.add_argument("--out", default="runs/bench_learning")
    args = parser.parse_args(argv)
    console, out = Console(), Path(args.out)

    updates = Table(title="First Adam step of the binary latent weights (lr 1e-4)")
    for col in ("student", "gradient", "mean |dW| / lr", "share > 50% off lr"):
        updates.add_column(col, justify="right" if col != "student" else "left")
    sizes = {"quickstart size, 48x48": (dict(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
                                              norm_groups=4, image_size=48, fp_resolutions=(48, 24), dropout=0.0), 48),
             "paper size, 64x64": ({}, 64)}
    for label, (config, patch) in sizes.items():
        for legacy in (True, False):
            mean, off = first_step_update(config, patch, legacy)
            updates.add_row(label, "alpha-scaled (before)" if legacy else "official (after)", f"{mean:.2f}",
                            f"{off:.0%}")
    console.print(updates)

    teacher_stage = (f'[[stages]]\ntype = "teacher"\nsteps = {args.teacher_steps}\nbatch_size = 8\nlr = 1e-3\n'
                     'lr_schedule = "cosine"\nwarmup_steps = 50\nema_decay = 0.995\n')
    student_stage = (f'[[stages]]\ntype = "direct"\nsteps = {args.student_steps}\nbatch_size = 8\nlr = 1e-3\n'
                     'lr_schedule = "cosine"\nwarmup_steps = 30\n')
    Trainer(quickstart_recipe(out / "teacher", teacher_stage, ddpm=True, init_from_teacher=False)).run()
    teacher = Teacher.from_pretrained(out / "teacher" / "teacher").freeze()
    students = {}
    for legacy in (True, False):
        name = "student_before" if legacy else "student_after"
        with legacy_weight_gradient(legacy):
            trainer = Trainer(quickstart_recipe(out / name, student_stage, ddpm=True, init_from_teacher=False))
            trainer.run()
            students[legacy] = trainer.student.eval()

    val = out / "teacher" / "data" / "skimage" / "val"
    images = load_validation(val, 4, "", 0, 128)
    table = Table(title=f"Sampled outputs, 2 held-out 128x128 crops, x4, 20-step DDIM (teacher {args.teacher_steps} "
                        f"steps, students {args.student_steps})")
    for col in ("model", "gradient", "x0 clip", "PSNR", "SSIM"):
        table.add_column(col, justify="left" if col in ("model", "gradient", "x0 clip") else "right")
    rows = []
    for clip in ("official", "data"):
        process = DDPMProcess(clip_sample=clip)
        t_res = evaluate(images, 4, None, Teacher(teacher.unet, process, 4).freeze(), num_inference_steps=20,
                         console=Console(quiet=True))
        if clip == "official":
            for m in ("bicubic", "condition"):
                rows.append((m, "-", "-", t_res["mean"][m]))
        rows.append(("FP twin teacher", "-", f"{clip} {process.clip_range}", t_res["mean"]["teacher"]))
        for legacy in (True, False):
            s_res = evaluate(images, 4, students[legacy], None, student_process=process, num_inference_steps=20,
                             console=Console(quiet=True))
            rows.append(("binarized student", "alpha-scaled (before)" if legacy else "official (after)",
                         f"{clip} {process.clip_range}", s_res["mean"]["student"]))
    for model, grad, clip, m in rows:
        table.add_row(model, grad, clip, f"{m['psnr']:.2f}", f"{m['ssim']:.4f}")
    console.print(table)


if __name__ == "__main__":
    main()
