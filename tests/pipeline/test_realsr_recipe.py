"""`recipes/bimacosr_realsr_x4.toml` end to end at test widths: an imported ResShift real-SR teacher (random weights in
the released layout), Real-ESRGAN LR made on the device, SinSR's one-step objective, first the full-precision twin and
then the BiMaCoSR student started from it, evaluation on degraded validation copies, a published folder."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.importers.command import main as import_main
from pipeline.recipe import load_recipe
from pipeline.sr_pipeline import BiDiffSRPipeline
from pipeline.trainer import Trainer
from test_latent_resshift import import_args, write_release

ROOT = Path(__file__).resolve().parents[2]
TINY = ["student.unet.base_channels=16", "student.unet.channel_mults=[1, 2]", "student.unet.num_res_blocks=1",
        "student.unet.norm_groups=4", "student.unet.image_size=32", "student.unet.fp_resolutions=[32]",
        "stages.0.steps=2", "stages.0.batch_size=2", "stages.0.warmup_steps=0", "stages.0.ema_decay=0.0",
        "data.patch_size=64", "data.num_workers=0", "run.log_with=[]", "eval.lpips=false"]


def images(folder: Path, size: int, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.fromarray((torch.rand(size, size, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    return folder


@pytest.mark.slow
def test_the_realsr_recipe_trains_a_twin_then_a_bimacosr_student_and_publishes(tmp_path):
    write_release(tmp_path)
    assert import_main(import_args(tmp_path)) == 0
    common = TINY + [f"data.train=\"{images(tmp_path / 'train', 96, 3)}\"",
                     f"data.val=\"{images(tmp_path / 'val', 64, 2)}\"", f"teacher.path=\"{tmp_path / 'teacher'}\""]
    twin = tmp_path / "twin"
    Trainer(load_recipe(ROOT / "recipes" / "bimacosr_realsr_x4.toml", common + [
        "student.unet.binarizer=none", "student.init=\"\"", f"run.output_dir=\"{twin}\""])).run()
    assert json.loads((twin / "student" / "config.json").read_text())["binarizer"] == "none"

    out = tmp_path / "bimacosr"
    result = Trainer(load_recipe(ROOT / "recipes" / "bimacosr_realsr_x4.toml", common + [
        f"student.init=\"{twin / 'student'}\"", f"run.output_dir=\"{out}\""])).run()
    assert set(result["mean"]) == {"bicubic", "condition", "teacher", "student"}
    assert all(torch.isfinite(torch.tensor(v["psnr"])) for v in result["mean"].values())
    degraded = sorted((out / "eval" / "lr").glob("realesrgan-*/*.png"))
    assert [p.name for p in degraded] == ["0x4.png", "1x4.png"]  # fixed, cached validation LR images
    fingerprint = json.loads((out / "stages" / "0-one_step" / "fingerprint.json").read_text())
    assert fingerprint["data"]["degradation"]["type"] == "realesrgan"
    assert fingerprint["stage"]["xt_weight"] == 1.0 and fingerprint["stage"]["gt_weight"] == 1.0
    pipe = BiDiffSRPipeline.from_pretrained(out / "publish")
    assert pipe.unet.config.binarizer == "bimacosr" and pipe.scheduler.config.one_step
    sr = pipe(torch.rand(1, 3, 16, 16), seed=0, output_type="pt").images[0]
    assert sr.shape == (3, 64, 64) and torch.isfinite(sr).all()
    card = (out / "publish" / "README.md").read_text()
    assert "Real-ESRGAN's second-order degradation" in card  # the LR model it was trained for
    assert "license: other" in card and "S-Lab License 1.0" in card  # the released teacher's licence, carried


def test_real_lr_images_without_hr_are_evaluated_as_samples(tmp_path):
    from pipeline.evaluate import main as evaluate_main

    write_release(tmp_path)
    assert import_main(import_args(tmp_path)) == 0
    images(tmp_path / "real", 12, 2)
    evaluate_main(["--teacher", str(tmp_path / "teacher"), "--val", str(tmp_path / "real"), "--lr-only",
                   "--scale", "4", "--no-lpips", "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["metrics"] == [] and metrics["num_images"] == 2 and metrics["seconds_per_image"]["teacher"] > 0
    assert [Image.open(tmp_path / "eval" / "teacher" / f"{i}.png").size for i in range(2)] == [(48, 48)] * 2
    assert (tmp_path / "eval" / "samples.png").stat().st_size > 0
