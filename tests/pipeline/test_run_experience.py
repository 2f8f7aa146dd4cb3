"""What a user sees around a run: the launcher's precision, the start-up summary and dry run, tracker contents,
loud LPIPS skips, a model card that keeps its evaluation, and up-front checks of Hub datasets and trackers."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, subprocess_env
from pipeline.preflight import load_checked
from pipeline.recipe import RecipeError, load_recipe
from recipe_builder import write_recipe

pytestmark = pytest.mark.skipif(not (SHARED / "data" / "Set5").is_dir(), reason="../shared/data not present")

def write(tmp_path, trackers=(), lpips=False, name="r") -> Path:
    """Two direct steps of the tiny student on Set14, evaluated on a 32-pixel crop of one Set5 image."""
    return write_recipe(tmp_path, name, run={"log_with": list(trackers), "log_every": 1},
                        data={"train": SHARED / "data" / "Set14", "val": SHARED / "data" / "Set5",
                              "val_max_images": 1, "val_crop": 32},
                        stages=[{"type": "direct", "steps": 2, "batch_size": 2}],
                        eval={"lpips": lpips, "num_inference_steps": 2})


@pytest.mark.slow
def test_precision_follows_the_launcher_and_a_conflict_is_named(tmp_path, monkeypatch):
    recipe = write(tmp_path)
    env = dict(subprocess_env(tmp_path), ACCELERATE_MIXED_PRECISION="bf16")
    done = subprocess.run([sys.executable, str(ROOT / "pipeline" / "run.py"), str(recipe), "--dry-run"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    assert "precision bf16 (from the launcher)" in said and "processes 1" in said
    assert "0-direct" in said and "new" in said and not (tmp_path / "r").exists()  # a dry run writes nothing

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(RecipeError, match=r"run.mixed_precision: is 'no' but the launcher asks for 'bf16'"):
        load_checked(recipe, ['run.mixed_precision="no"'])
    assert load_checked(recipe, ['run.mixed_precision="bf16"']).recipe.run.mixed_precision == "bf16"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"run.log_with\[0\]: 'wandb' needs the wandb package"):
        load_checked(write(tmp_path, trackers=["wandb"]))


def test_an_unreachable_uncached_hub_dataset_stops_before_training(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    recipe = write(tmp_path)
    overrides = ['data.train=""', 'data.train_hub="someone/photos"']
    with pytest.raises(RecipeError, match=r"data.train_hub: cannot reach the Hub for 'someone/photos' .* not in the "
                                          r"local cache"):
        load_checked(recipe, overrides)  # the tests run with HF_HUB_OFFLINE=1
    (tmp_path / "hub" / "datasets--someone--photos").mkdir(parents=True)
    assert load_checked(recipe, overrides).recipe.data.train_hub == "someone/photos"


def test_trackers_get_speed_memory_metrics_and_the_grid_and_the_card_keeps_its_table(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.trainer import Trainer

    recipe = write(tmp_path, trackers=["tensorboard"])
    Trainer(load_recipe(recipe)).run()
    out = tmp_path / "r"
    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents*")).parent)).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"direct/loss", "direct/steps_per_s", "direct/samples_per_s", "direct/peak_memory_gb",
            "eval/student/psnr", "eval/bicubic/ssim"} <= scalars, scalars
    assert "eval/samples" in events.Tags()["images"]
    assert events.Scalars("direct/peak_memory_gb")[-1].value > 0.05

    card = (out / "publish" / "README.md").read_text()
    assert "| student |" in card
    capsys.readouterr()
    Trainer(load_recipe(recipe, ["eval.enabled=false"])).run()  # a rerun without evaluation
    assert "keeps the last evaluation" in capsys.readouterr().out
    assert "| student |" in (out / "publish" / "README.md").read_text()


def test_a_skipped_lpips_is_loud_in_the_table_the_metrics_and_the_card(tmp_path, capsys, monkeypatch):
    from pipeline.trainer import Trainer

    monkeypatch.setenv("BIDISTILL_LPIPS_ALEX", str(tmp_path / "missing_alex.pth"))
    Trainer(load_recipe(write(tmp_path, lpips=True))).run()
    said = " ".join(capsys.readouterr().out.split())
    assert "LPIPS SKIPPED" in said and "skipped" in said
    metrics = json.loads((tmp_path / "r" / "eval" / "metrics.json").read_text())
    assert "missing_alex.pth does not exist" in metrics["lpips_skipped"]
    assert "LPIPS was not computed" in (tmp_path / "r" / "publish" / "README.md").read_text()


def test_printing_a_recipe_needs_no_data_and_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from pipeline.run import main as run_main
    from pipeline.trainer import Trainer

    recipe = ROOT / "recipes" / "bidiffsr_x4.toml"  # its DF2K folder is absent here
    assert run_main([str(recipe), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["train"] == "datasets/DF2K/HR"

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", interrupted)
    assert run_main([str(ROOT / "recipes" / "tiny.toml"), "--set", f'run.output_dir="{tmp_path / "run"}"']) == 130
    said = capsys.readouterr().err
    assert "run the same command again to resume" in said and "Traceback" not in said


def test_evaluate_skips_an_unavailable_lpips_as_training_does(tmp_path, monkeypatch, capsys):
    from pipeline import evaluate as evaluate_cli
    from pipeline.metrics import LPIPSUnavailable

    def offline(*args, **kwargs):
        raise LPIPSUnavailable("no backbone: offline")

    monkeypatch.setattr(evaluate_cli, "load_lpips", offline)
    evaluate_cli.main(["--val", str(SHARED / "data" / "Set5"), "--scale", "4", "--max-images", "1", "--crop", "32",
                       "--out", str(tmp_path / "ev")])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["lpips_skipped"] == "no backbone: offline" and metrics["metrics"] == ["psnr", "ssim"]


def test_a_launcher_that_runs_fewer_processes_than_asked_is_named(tmp_path, monkeypatch, capsys):
    from pipeline.trainer import Trainer

    monkeypatch.setenv("MASTER_PORT", "29500")  # what `accelerate launch --cpu --num_processes 2` leaves, in 1 process
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    Trainer(load_recipe(ROOT / "recipes" / "tiny.toml", [f'run.output_dir="{tmp_path / "run"}"']))
    assert "runs one" in capsys.readouterr().out


def test_a_shipped_recipe_is_found_by_name_from_anywhere(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main as cli_main

    monkeypatch.chdir(tmp_path)  # not the repository: an installed package's user
    assert cli_main(["train", "tiny", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["builtin"] == "skimage"
    assert cli_main(["train", "no_such_recipe"]) == 2
    assert "recipe file does not exist" in capsys.readouterr().err


def test_evaluation_reports_progress_per_image_when_not_in_a_terminal(tmp_path, capsys):
    from pipeline import evaluate as evaluate_cli

    evaluate_cli.main(["--val", str(SHARED / "data" / "Set5"), "--scale", "4", "--max-images", "2", "--crop", "32",
                       "--no-lpips"])
    out = capsys.readouterr().out
    assert "evaluated 1/2 (baby)" in out
    assert re.search(r"evaluated 2/2 \(bird\) [\d.]+ (image/s|s/image), elapsed \d+:\d\d, ETA 0:00", out)
