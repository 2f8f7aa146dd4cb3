"""The staged trainer end to end: outputs, exact resume after SIGKILL, two-process DDP, evaluation on a checkpoint."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, SHARED, subprocess_env
from pipeline import evaluate as evaluate_cli
from pipeline.recipe import load_recipe
from pipeline.trainer import Trainer
from recipe_builder import write_recipe

pytestmark = pytest.mark.skipif(not (SHARED / "data" / "Set14").is_dir(), reason="../shared/data not present")

def direct_recipe(tmp_path, name, steps=12, every=3) -> Path:
    """The tiny student (dropout 0.2) trained directly on Set14 with EMA, clipping, accumulation and a schedule."""
    return write_recipe(tmp_path, name,
                        run={"log_every": 5, "checkpoint_every": every, "keep_checkpoints": 2},
                        data={"train": SHARED / "data" / "Set14"}, student={"unet": {"dropout": 0.2}},
                        stages=[{"type": "direct", "steps": steps, "batch_size": 2, "lr": 1e-3, "ema_decay": 0.9,
                                 "max_grad_norm": 1.0, "grad_accum": 2, "lr_schedule": "cosine",
                                 "warmup_steps": 2}])


def final_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "student" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_tiny_recipe_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", [f"run.output_dir=\"{tmp_path / 'run'}\""])
    result = Trainer(recipe).run()
    out = tmp_path / "run"
    for stage in ("0-teacher", "1-direct", "2-feature_distill"):
        assert (out / "stages" / stage).is_dir()
    assert (out / "student" / "config.json").is_file() and (out / "teacher" / "model_index.json").is_file()
    assert set(result["mean"]) == {"bicubic", "condition", "teacher", "student"}
    assert json.loads((out / "eval" / "metrics.json").read_text())["num_images"] == 2
    assert json.loads((out / "teacher" / "unet" / "config.json").read_text())["binarizer"] == "none"
    assert (out / "student" / "scheduler_config.json").is_file()
    assert (out / "eval" / "samples.png").stat().st_size > 0
    ckpt = sorted((out / "checkpoints" / "1-direct").glob("step-*"))[-1]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["stage_index"] == 1 and state["stage_step"] == 2
    assert {"model.safetensors", "optimizer.bin", "lr_scheduler.pt", "config.json",
            "scheduler_config.json"} <= {p.name for p in ckpt.iterdir()}

    # a second run resumes nothing but skips every completed stage and reproduces the same student
    before = final_weights(out)
    Trainer(load_recipe(ROOT / "recipes" / "tiny.toml", [f"run.output_dir=\"{out}\"", "eval.enabled=false"])).run()
    after = final_weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)

    # evaluation runs alone on a mid-stage checkpoint
    evaluate_cli.main(["--student", str(ckpt), "--val", str(SHARED / "data" / "Set5"), "--scale", "4", "--steps", "2",
                       "--max-images", "1", "--crop", "32", "--no-lpips", "--out", str(tmp_path / "ev")])
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())["mean"]
    assert set(scored) == {"bicubic", "condition", "student"}


def run_script(recipe: Path, tmp_path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "pipeline" / "run.py"), str(recipe), *extra], cwd=ROOT,
                            env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--set", "data.degradation=realesrgan", "--set", "data.patch_size=64"]],
                         ids=["bicubic", "realesrgan"])
def test_sigkill_and_resume_ends_with_the_same_weights(tmp_path, extra):
    reference = run_script(direct_recipe(tmp_path, "reference"), tmp_path, *extra)
    killed_recipe = direct_recipe(tmp_path, "killed")
    killed = run_script(killed_recipe, tmp_path, *extra)
    checkpoints = tmp_path / "killed" / "checkpoints" / "0-direct"
    deadline = time.time() + 600  # a guard against a hang only: a slow machine must not fail this test
    while not (checkpoints / "step-00000006").exists():
        assert killed.poll() is None, killed.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared in 10 minutes"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "student").exists(), "the run finished before it could be killed"
    # a half-written checkpoint (killed while saving) must be ignored
    (checkpoints / ".step-00000099.partial").mkdir()
    resumed = run_script(killed_recipe, tmp_path, *extra)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resuming stage 0 (direct) at step" in out
    ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out
    a, b = final_weights(tmp_path / "reference"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_keep_identical_weights(tmp_path):
    recipe = direct_recipe(tmp_path, "ddp", steps=4, every=2)
    env = subprocess_env(tmp_path)
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(ROOT / "tests" / "ddp_worker.py"), str(recipe)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "ddp"
    r0, r1 = load_file(out / "rank0-of-2.safetensors"), load_file(out / "rank1-of-2.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    single = final_weights(out)
    assert all(torch.equal(r0[k], single[k]) for k in r0)


def test_a_non_finite_loss_stops_the_run_before_any_checkpoint_holds_it(tmp_path, monkeypatch):
    """NaN from the third step on: the run stops at the next check (the step-4 checkpoint is never written) and names
    the stage, the step and the last good checkpoint."""
    import pipeline.stages.direct as direct
    from pipeline.trainer import NonFiniteLoss

    calls = {"n": 0}
    real = direct.training_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 2 * 2 else loss  # grad_accum = 2: micro-steps 5+ are step 3+

    monkeypatch.setattr(direct, "training_loss", poisoned)
    recipe = load_recipe(direct_recipe(tmp_path, "nan", steps=8, every=2), ["run.log_every=5"])
    with pytest.raises(NonFiniteLoss,
                       match=r"stage 0 \(direct\): loss.* by step 4 .*checkpoints/0-direct/step-00000002"):
        Trainer(recipe).run()
    ckpts = sorted(p.name for p in (tmp_path / "nan" / "checkpoints" / "0-direct").iterdir())
    assert ckpts == ["step-00000002"] and not (tmp_path / "nan" / "student").exists()
