"""The distillation study's parts: paired intervals that can fail, the teacher-target objective, fingerprints that
keep older runs valid, and a smoke run of the whole study."""

import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_STUDENT
from pipeline.recipe import StageConfig, load_recipe
from pipeline.run_folder import ADDED_STAGE_SETTINGS, SHARED_TABLE_STAGE_SETTINGS, stage_fingerprints
from pipeline.stages import FeatureDistillStage
from students.bidiffsr import BiDiffSRUNet
from teachers import DDPMProcess, ResShiftProcess
from teachers.base import Teacher

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from benchmarks.paired_stats import paired_difference  # noqa: E402


def test_a_clear_gain_has_an_interval_above_zero_and_noise_does_not():
    rng = np.random.default_rng(1)
    reference = rng.normal(28.0, 2.0, size=(2, 7))  # image difficulty dominates the raw scores
    d, lo, hi = paired_difference(reference + 0.1 + rng.normal(0, 0.02, size=(2, 7)), reference)
    assert lo > 0 and lo < d < hi and abs(d - 0.1) < 0.02
    d, lo, hi = paired_difference(reference + rng.normal(0, 0.1, size=(2, 7)), reference)
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="seeds, images"):
        paired_difference(reference, reference[:, :3])


def test_the_interval_resamples_seeds_too():
    reference = np.zeros((2, 6))
    one_lucky_seed = np.array([[1.0] * 6, [-0.2] * 6])  # every image agrees within a seed, the seeds do not
    d, lo, hi = paired_difference(one_lucky_seed, reference)
    assert lo < 0 < hi and d == pytest.approx(0.4)


def test_the_teacher_target_objective_drops_the_data_term():
    process = ResShiftProcess(prediction_type="residual")
    student = BiDiffSRUNet(**TINY_STUDENT, binarizer="bidiffsr")
    teacher = Teacher(BiDiffSRUNet(**BiDiffSRUNet.twin_config(student.config)), process, scale=4).freeze()
    batch = {"hr": torch.rand(2, 3, 32, 32), "cond": torch.rand(2, 3, 32, 32), "lr": torch.rand(2, 3, 8, 8)}

    def losses(**weights):
        stage = FeatureDistillStage(teacher, process, [], spd_weight=0.0, **weights)
        return stage.loss(student, batch, torch.Generator().manual_seed(3))

    both, logs = losses(output_weight=1.0)
    only_teacher, teacher_logs = losses(output_weight=1.0, direct_weight=0.0)
    assert torch.equal(only_teacher, teacher_logs["output"]) and not torch.equal(only_teacher, both)
    assert torch.allclose(both, logs["direct"] + logs["output"])


def test_a_new_stage_setting_at_its_default_leaves_fingerprints_as_they_were(make_recipe):
    path = make_recipe()
    process = ResShiftProcess()
    default = stage_fingerprints(load_recipe(path), process, TINY_STUDENT)[0]["stage"]
    every_type = set(SHARED_TABLE_STAGE_SETTINGS) | {f.name for f in fields(StageConfig)}  # as before per-type settings
    assert set(default) == every_type - {"name", *ADDED_STAGE_SETTINGS}
    path = make_recipe(stages=[{"type": "feature_distill", "steps": 3}])
    distill = stage_fingerprints(load_recipe(path), process, TINY_STUDENT)[0]["stage"]
    assert distill == dict(default, type="feature_distill")
    changed = stage_fingerprints(load_recipe(path, ["stages.0.direct_weight=0.5"]), process, TINY_STUDENT)[0]
    assert changed["stage"]["direct_weight"] == 0.5
    ddpm = stage_fingerprints(load_recipe(path), DDPMProcess(), TINY_STUDENT)[0]["process"]
    assert "condition_resize" not in ddpm and "num_train_timesteps" in ddpm
    pil = stage_fingerprints(load_recipe(path), DDPMProcess(condition_resize="pil"), TINY_STUDENT)[0]["process"]
    assert pil["condition_resize"] == "pil"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "Set14").is_dir(), reason="../shared/data not present")
def test_the_study_runs_end_to_end_and_reuses_what_it_finished(tmp_path, monkeypatch, capsys):
    from benchmarks import distillation

    monkeypatch.chdir(ROOT)
    out = tmp_path / "study"
    backbone = SHARED / "weights" / "alexnet_features_imagenet1k_v1.pth"
    argv = ["--quick", "--out", str(out), "--lpips-backbone", str(backbone)]
    distillation.main(argv)
    table = json.loads((out / "table.json").read_text())
    labels = [row[0] for row in table["rows"]]
    assert labels[:3] == ["bicubic (MATLAB)", "condition (the models' input)", "FP twin teacher (40 steps)"]
    assert any(label.endswith("*") for label in labels)  # the best objective is marked
    assert any(label.startswith("BiMaCoSR design (official unit)") for label in labels)
    column = table["header"].index("dPSNR vs reference [95% CI]")
    reference = next(row for row in table["rows"] if row[0].startswith("twin init + direct (reference)"))
    assert reference[column] == "-"  # no interval against itself
    doubled = next(row for row in table["rows"] if row[0].endswith("2x steps (vs direct at 2x)"))
    low, high = (float(v) for v in doubled[column].split("[")[1].rstrip("]").split(","))
    assert low <= float(doubled[column].split()[0]) <= high
    scores = sorted(p.name for p in (out / "scores").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in (out / "scores").glob("*.json")}
    distillation.main(argv)  # everything is reused: no score is recomputed
    assert sorted(p.name for p in (out / "scores").glob("*.json")) == scores
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
