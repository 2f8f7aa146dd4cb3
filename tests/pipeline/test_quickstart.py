"""The README's main command: recipes/quickstart.toml, shortened to a few steps, runs end to end on the photos
bundled with scikit-image and leaves a loadable published folder."""

from pathlib import Path

import pytest
from PIL import Image

from pipeline.builtin_data import SKIMAGE_TRAIN, SKIMAGE_VAL, export_skimage
from pipeline.recipe import load_recipe
from pipeline.sr_pipeline import BiDiffSRPipeline
from pipeline.trainer import Trainer
from students.packing import unpack_student

ROOT = Path(__file__).resolve().parents[2]


def test_skimage_export_is_real_rgb_photos(tmp_path):
    train, val = export_skimage(tmp_path)
    assert sorted(p.name for p in train.iterdir()) == sorted(f"{Path(n).stem}.png" for n in SKIMAGE_TRAIN)
    assert len(list(val.iterdir())) == len(SKIMAGE_VAL)
    img = Image.open(train / "astronaut.png")
    assert img.mode == "RGB" and img.size == (512, 512)
    export_skimage(tmp_path)  # idempotent


@pytest.mark.slow
def test_quickstart_recipe_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(ROOT / "recipes" / "quickstart.toml")
    short = [f"run.output_dir=\"{tmp_path}\"", "run.log_with=[]", "eval.lpips=false", "data.val_crop=48",
             "data.num_workers=0"]
    for i, stage in enumerate(recipe.stages):
        short += [f"stages.{i}.steps=2", f"stages.{i}.warmup_steps=1"]
    result = Trainer(load_recipe(ROOT / "recipes" / "quickstart.toml", short)).run()
    assert set(result["mean"]) == {"bicubic", "condition", "teacher", "student"} and result["num_images"] == 2
    publish = tmp_path / "publish"
    pipe = BiDiffSRPipeline.from_pretrained(publish)
    assert pipe(Image.new("RGB", (10, 6)), seed=0).images[0].size == (40, 24)
    assert unpack_student(publish / "student_1bit.safetensors").config.fp_resolutions == [48, 24]
    assert (tmp_path / "eval" / "samples.png").is_file()
