"""The GPU check script (`benchmarks/device_check.py`) runs end to end in its CPU smoke mode and fails on a
non-finite distillation loss."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import device_check  # noqa: E402


def test_the_smoke_run_prints_every_table_and_passes(capsys):
    assert device_check.main(["--smoke", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for row in ("ours (BiDiffSRUNet)", "released (re-stated)", "Tiled sampling", "Feature distillation",
                "every loss finite"):
        assert row in out
    assert out.count("bf16") >= 4  # both networks' training rows and a sampling row in bf16, and the stage


def test_a_non_finite_distillation_loss_fails_the_check(monkeypatch, capsys):
    real = device_check.distillation_losses

    def poisoned(*args, **kwargs):
        logs = real(*args, **kwargs)
        logs[-1]["spd"] = math.nan
        return logs

    monkeypatch.setattr(device_check, "distillation_losses", poisoned)
    assert device_check.main(["--smoke", "--device", "cpu"]) == 1
    assert "NON-FINITE" in capsys.readouterr().out
