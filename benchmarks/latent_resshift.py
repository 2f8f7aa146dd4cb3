"""What a released ResShift teacher and a BI-DiffSR student on its latents cost on this machine, at the released sizes
(the weights are random: speed does not depend on them).

Rows, for one 256x256 output (a 64x64 LR image; latents 64x64 on the VQ-f4 autoencoder), batch 1, median of
`--repeats` timings each:
1. the autoencoder: encoding the upsampled LR (the chain's end point), decoding the final latent;
2. one evaluation of the released denoiser (`SwinUNet`, 118.6M parameters) and of BI-DiffSR's paper-size student on
   the latents (`recipes/one_step_released_resshift_x4.toml`), against the same student on 256x256 pixels;
3. whole super-resolutions: the teacher's 15 ancestral steps, a SinSR-style one-step teacher and a one-step student
   (each encode + evaluations + decode);
4. one training step of the one-step distillation stage (batch 1: the teacher's 15-step target, the student's
   forward and backward), alone and with SinSR's inverse and ground-truth terms (two more student evaluations with
   gradient, one without, and an encoding of the HR patch);
5. the Real-ESRGAN degradation of a batch of 8 HR patches (the LR model real-SR teachers were trained on).

    python benchmarks/latent_resshift.py [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from pipeline.degradations import RealESRGANDegradation  # noqa: E402
from pipeline.importers.resshift import VQ_F4, vq_model  # noqa: E402
from pipeline.resize import upsample_cond  # noqa: E402
from pipeline.sr_pipeline import super_resolve  # noqa: E402
from pipeline.stages.one_step import OneStepStage  # noqa: E402
from students.bidiffsr import BiDiffSRUNet  # noqa: E402
from teachers import LatentResShiftProcess, Teacher  # noqa: E402
from teachers.swin_unet import SwinUNet, parameter_count  # noqa: E402

LATENT_STUDENT = dict(base_channels=64, channel_mults=(1, 2, 4, 8), num_res_blocks=2, dropout=0.0, norm_groups=16,
                      image_size=64, fp_resolutions=(64, 32), num_train_timesteps=15, timestep_groups=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    process = LatentResShiftProcess().use_autoencoder(vq_model(**VQ_F4))
    teacher = Teacher(SwinUNet().eval(), process).freeze()
    student = BiDiffSRUNet(**LATENT_STUDENT).eval()
    pixel_student = BiDiffSRUNet(**dict(LATENT_STUDENT, image_size=256, fp_resolutions=(256, 128))).eval()
    lr_image = torch.rand(1, 3, 64, 64)
    cond = upsample_cond(lr_image, 4)
    x, lr, t = torch.randn(1, 3, 64, 64), torch.rand(1, 3, 64, 64) * 2 - 1, torch.tensor([14])
    latent = process.encode(cond)
    one_step = process.one_step_variant()
    time_ = lambda fn: median_seconds(fn, args.repeats)  # noqa: E731

    rows = []
    with torch.no_grad():
        rows.append(("autoencoder: encode 256x256", time_(lambda: process.encode(cond))))
        rows.append(("autoencoder: decode to 256x256", time_(lambda: process.decode(latent))))
        rows.append((f"teacher (SwinUNet, {parameter_count(teacher.unet) / 1e6:.1f}M): one evaluation",
                     time_(lambda: teacher.unet(x, lr, t))))
        rows.append((f"student on latents ({parameter_count(student) / 1e6:.1f}M): one evaluation",
                     time_(lambda: student(x, lr, t))))
        rows.append(("same student on 256x256 pixels: one evaluation",
                     time_(lambda: pixel_student(torch.randn(1, 3, 256, 256), cond, t))))
        rows.append(("teacher: 15-step SR of a 64x64 LR", time_(lambda: teacher.sample(cond))))
        sinsr = Teacher(teacher.unet, one_step)
        rows.append(("one-step teacher (SinSR layout): SR", time_(lambda: sinsr.sample(cond))))
        rows.append(("one-step student: SR", time_(lambda: super_resolve(student, one_step, cond))))
    trainable = BiDiffSRUNet(**LATENT_STUDENT).train()
    batch = {"hr": torch.rand(1, 3, 256, 256), "cond": cond, "lr": lr_image}
    for label, stage in (("one-step distillation", OneStepStage(teacher, one_step)),
                         ("with SinSR's inverse and ground-truth terms",
                          OneStepStage(teacher, one_step, xt_weight=1.0, gt_weight=1.0))):

        def train_step():
            loss, _ = stage.loss(trainable, batch, torch.Generator().manual_seed(0))
            loss.backward()

        rows.append((f"{label}: one training step (batch 1)", time_(train_step)))
    degradation = RealESRGANDegradation()
    rows.append(("Real-ESRGAN degradation of a batch of 8 256x256 patches",
                 time_(lambda: degradation(torch.rand(8, 3, 256, 256), torch.Generator().manual_seed(0),
                                           random.Random(0)))))

    table = Table(title=f"Released-size ResShift teacher and latent student, 256x256 output, {torch.get_num_threads()} "
                        "threads")
    table.add_column("what")
    table.add_column("seconds", justify="right")
    for name, seconds in rows:
        table.add_row(name, f"{seconds:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
