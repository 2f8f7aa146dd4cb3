"""Progress the same way in every long command: plain lines with rate and ETA when not in a terminal."""

from __future__ import annotations

import io
import re

import torch
from PIL import Image
from rich.console import Console

from pipeline import upscale
from pipeline.progress import Phase, Progress
from pipeline.publish import write_model_folder
from students.bidiffsr import BiDiffSRUNet
from teachers import DDPMProcess


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_plain_lines_carry_count_rate_elapsed_and_eta():
    console, out = plain_console()
    with Progress("converting", total=3, unit="file", console=console, every=0) as progress:
        for name in ("a", "b", "c"):
            progress.advance(note=name)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"converting 1/3 \(a\) [\d.]+ (file/s|s/file), elapsed 0:00, ETA 0:00", lines[0])
    assert lines[2].startswith("converting 3/3 (c)")


def test_lines_come_at_most_every_interval_and_always_at_the_end():
    console, out = plain_console()
    with Progress("sampling", total=50, console=console, every=3600) as progress:
        for _ in range(50):
            progress.advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sampling 50/50 ")


def test_the_total_may_come_from_the_work_and_disabled_prints_nothing():
    console, out = plain_console()
    with Progress("x", total=0, console=console, every=0) as progress:
        progress.update(2, total=4)
        assert progress.total == 4 and progress.done == 2
    assert out.getvalue().startswith("x 2/4 ")
    console, out = plain_console()
    with Progress("x", total=2, console=console, every=0, enabled=False) as progress:
        progress.advance(2)
    assert out.getvalue() == ""


def test_a_phase_prints_its_start_and_its_duration():
    console, out = plain_console()
    with Phase("reading net_g.pth (12 MB)", console=console):
        pass
    assert re.fullmatch(r"reading net_g.pth \(12 MB\) \.\.\.\nreading net_g.pth \(12 MB\): done in [\d.]+ s\n",
                        out.getvalue())


def test_the_upscale_command_reports_evaluations_on_stderr(tiny_config, tmp_path, capsys):
    folder = write_model_folder(BiDiffSRUNet(**tiny_config).eval(), DDPMProcess(), 4, tmp_path / "publish")
    Image.fromarray((torch.rand(7, 9, 3) * 255).byte().numpy()).save(tmp_path / "lr.png")
    args = [str(tmp_path / "lr.png"), str(tmp_path / "sr.png"), "--model", str(folder), "--steps", "3"]
    assert upscale.main(args + ["--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"1/1 lr.png 3/3 [\d.]+ (eval/s|s/eval), elapsed \d+:\d\d, ETA 0:00", err), err
    assert upscale.main(args + ["--device", "cpu", "--overwrite", "--quiet"]) == 0
    assert "1/1 lr.png" not in capsys.readouterr().err
