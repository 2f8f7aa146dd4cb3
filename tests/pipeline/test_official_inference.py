"""An imported latent ResShift / SinSR teacher, and a student on its latents, give the official inference on a
user's LR image through every user path, each run in a fresh interpreter (what a user's process has imported is
only what the load path imports): `teacher.sample`, `python -m pipeline.evaluate --teacher`, and
`python -m pipeline.upscale` of a published latent student.

The reference is zsyOAOA/ResShift's inference re-stated step by step (`sampler.py` `sample_func` and
`models/gaussian_diffusion.py` `p_sample_loop`): the LR in [-1, 1] reflect-padded to the release's `lq_size`, torch
bicubic x4 without clipping, the unquantised encoder, x_T = z_y + kappa sqrt(eta_T) eps, the ancestral posterior steps
on x_t / sqrt(kappa^2 eta_t + 1) with the padded LR as the network's `lq`, the quantised decoder, the crop back and the
clamp; SinSR's one-step sampler is one evaluation at the top step read as x0. Every noise draw of the reference comes
from the same generator, in the same order, as ours."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.importers.command import main as import_main
from pipeline.metrics import psnr_y
from teachers import load_teacher
from test_latent_resshift import OPTIONS, import_args, write_release

ROOT = Path(__file__).resolve().parents[2]


def official_inference(net, vae, process, lr: torch.Tensor, generator: torch.Generator, multiple: int,
                       one_step: bool = False) -> torch.Tensor:
    """ResShift's (or SinSR's one-step) inference of `lr` in [0, 1] -> [0, 1], written out as the release does it."""
    h, w = lr.shape[-2:]
    y0 = lr * 2 - 1
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        y0 = F.pad(y0, (0, pw, 0, ph), mode="reflect")
    with torch.no_grad():
        z_y = vae.encode(F.interpolate(y0, scale_factor=4, mode="bicubic")).latents
        etas, kappa = process.etas.float(), float(process.config.kappa)
        x = z_y + kappa * etas[-1].sqrt() * torch.randn(z_y.shape, generator=generator)
        steps = [len(etas) - 1] if one_step else list(reversed(range(len(etas))))
        for i in steps:
            x0 = net(x / (kappa**2 * etas[i] + 1).sqrt(), y0, torch.full((lr.shape[0],), i))
            if one_step:
                x = x0
                break
            prev = etas[i - 1] if i else torch.tensor(0.0)
            alpha = etas[i] - prev
            mean = prev / etas[i] * x + alpha / etas[i] * x0
            x = mean + (kappa**2 * prev / etas[i] * alpha).sqrt() * torch.randn(x.shape, generator=generator)
        out = vae.decode(x).sample[:, :, : 4 * h, : 4 * w]
    return (out.clamp(-1, 1) + 1) / 2


def run_fresh(code: str, tmp_path: Path) -> None:
    """Run `code` in a new interpreter (the project on its path, nothing else imported)."""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]


def save_png(tensor: torch.Tensor, path: Path) -> torch.Tensor:
    """Write a (1, 3, h, w) [0, 1] tensor as an 8-bit PNG; returns what the PNG holds, as [0, 1] floats."""
    arr = (tensor[0] * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255


def read_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255


@pytest.mark.slow
def test_an_imported_teacher_samples_as_the_official_code_in_a_fresh_process(tmp_path):
    """A size multiple of lq_size (8 here) and one that is not; the LR given, and recovered from the unclamped
    condition; the SinSR one-step import too."""
    write_release(tmp_path)
    assert import_main(import_args(tmp_path)) == 0
    assert import_main(import_args(tmp_path, "sinsr", "--one-step")) == 0
    torch.manual_seed(0)
    lrs = {"8x8": torch.rand(1, 3, 8, 8), "10x9": torch.rand(1, 3, 10, 9)}
    for name, lr in lrs.items():
        torch.save(lr, tmp_path / f"lr_{name}.pt")
    run_fresh(f"""
import torch
from teachers.base import load_teacher  # the load path alone must bring the Swin UNet's module
from pipeline.resize import upsample_cond
for folder in ("teacher", "sinsr"):
    teacher = load_teacher({str(tmp_path)!r} + "/" + folder)
    for name in {list(lrs)!r}:
        lr = torch.load(f"lr_{{name}}.pt")
        cond = upsample_cond(lr, 4)
        given = teacher.sample(cond, generator=torch.Generator().manual_seed(3), lr=lr)
        recovered = teacher.sample(cond, generator=torch.Generator().manual_seed(3))
        torch.save({{"given": given, "recovered": recovered}}, f"ours_{{folder}}_{{name}}.pt")
""", tmp_path)
    for folder in ("teacher", "sinsr"):
        teacher = load_teacher(tmp_path / folder)
        for name, lr in lrs.items():
            ours = torch.load(tmp_path / f"ours_{folder}_{name}.pt")
            official = official_inference(teacher.unet, teacher.process.autoencoder, teacher.process, lr,
                                          torch.Generator().manual_seed(3), OPTIONS["model"]["params"]["lq_size"],
                                          one_step=folder == "sinsr")
            assert official.shape == (1, 3, 4 * lr.shape[-2], 4 * lr.shape[-1])
            for how in ("given", "recovered"):
                torch.testing.assert_close(ours[how], official, atol=2e-4, rtol=0, msg=f"{folder} {name} {how}")


@pytest.mark.slow
def test_evaluate_scores_an_imported_teacher_on_the_official_output(tmp_path):
    """`python -m pipeline.evaluate --teacher` on an LR folder: the teacher row's PSNR is the official output's."""
    write_release(tmp_path)
    assert import_main(import_args(tmp_path)) == 0
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    torch.manual_seed(1)
    hrs, lrs = {}, {}
    for stem, (h, w) in {"a": (40, 36), "b": (32, 32)}.items():
        hrs[stem] = save_png(torch.rand(1, 3, h, w), tmp_path / "hr" / f"{stem}.png")
        lrs[stem] = save_png(torch.rand(1, 3, h // 4, w // 4), tmp_path / "lr" / f"{stem}x4.png")
    run_fresh(f"""
from pipeline.evaluate import main
main(["--teacher", "teacher", "--val", "hr", "--val-lr", "lr", "--scale", "4", "--no-lpips", "--seed", "7",
      "--out", "eval"])
""", tmp_path)
    scores = {row["image"]: row["teacher"]["psnr"] for row in
              json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_image"]}
    teacher = load_teacher(tmp_path / "teacher")
    generator = torch.Generator().manual_seed(7)  # evaluation draws each model's images from one seeded generator
    for stem in sorted(hrs):
        official = official_inference(teacher.unet, teacher.process.autoencoder, teacher.process, lrs[stem],
                                      generator, OPTIONS["model"]["params"]["lq_size"])
        assert abs(scores[stem] - float(psnr_y(official, hrs[stem], 4))) < 0.01, stem


@pytest.mark.slow
def test_upscale_of_a_latent_student_follows_the_official_conventions(tmp_path):
    """A student published on the imported teacher's latents, run by `python -m pipeline.upscale`: the real LR
    padded at LR size and given to the network, the unclamped bicubic condition, the student's own size multiple."""
    from conftest import TINY_STUDENT
    from pipeline.publish import write_model_folder
    from students.bidiffsr import BiDiffSRUNet

    write_release(tmp_path)
    assert import_main(import_args(tmp_path)) == 0
    teacher = load_teacher(tmp_path / "teacher")
    torch.manual_seed(2)
    student = BiDiffSRUNet(**dict(TINY_STUDENT, num_train_timesteps=teacher.process.num_train_timesteps)).eval()
    write_model_folder(student, teacher.process, 4, tmp_path / "publish")
    lr = save_png(torch.rand(1, 3, 9, 11), tmp_path / "lr.png")
    run_fresh("""
from pipeline.upscale import main
raise SystemExit(main(["lr.png", "sr.png", "--model", "publish", "--seed", "5", "--quiet"]))
""", tmp_path)
    official = official_inference(student, teacher.process.autoencoder, teacher.process, lr,
                                  torch.Generator().manual_seed(5), student.size_multiple)
    ours = read_png(tmp_path / "sr.png")
    assert ours.shape == official.shape == (1, 3, 36, 44)
    assert (ours - official).abs().max() <= 1.01 / 255
