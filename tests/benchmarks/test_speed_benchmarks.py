"""The CPU speed benchmarks run end to end at tiny sizes and print their tables (their numbers are the README's; here
only that they still run)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import binary_speed, freed_memory  # noqa: E402


@pytest.mark.slow
def test_binary_speed_prints_every_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rows unwrapped
    binary_speed.main(["--size", "32", "--repeats", "1", "--layer-repeats", "1", "--steps", "1"])
    out = capsys.readouterr().out
    assert "all binarized convs" in out and "paper configuration" in out and "one step" in out


@pytest.mark.slow
def test_freed_memory_compares_both_thresholds(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    freed_memory.main(["--size", "32", "--repeats", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "glibc's own" in out and "kept (every command)" in out
