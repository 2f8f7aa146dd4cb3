"""The README's snippets run as written: every ```python block executes (in a scratch folder holding what the
README says a reader has at that point: a published model from the quickstart and an LR image), and every command
of the ```bash blocks names a recipe that exists and a module whose --help works (the long runs themselves are
tested elsewhere: test_quickstart.py, test_trainer.py)."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.publish import write_model_folder
from students.bidiffsr import BiDiffSRUNet
from teachers import ResShiftProcess

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture
def reader_folder(tmp_path, monkeypatch, tiny_config):
    """A reader's working folder after the quickstart: runs/quickstart/publish and an LR image my_lr.png."""
    monkeypatch.chdir(tmp_path)
    student = BiDiffSRUNet(**dict(tiny_config, num_train_timesteps=15, timestep_groups=5))
    write_model_folder(student, ResShiftProcess(prediction_type="residual"), 4,
                       tmp_path / "runs" / "quickstart" / "publish")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((12, 10, 3)) * 255).astype(np.uint8)).save(tmp_path / "my_lr.png")
    return tmp_path


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippets_run(index, reader_folder):
    code = blocks("python")[index]
    torch.manual_seed(0)
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})


def commands() -> list[list[str]]:
    """Each command line of the bash blocks (continuations joined, comments dropped), as argv lists."""
    text = "\n".join(blocks("bash")).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            for part in line.split("&&"):
                out.append(shlex.split(part))
    return out


def test_bash_commands_name_real_recipes_and_modules():
    checked = 0
    for argv in commands():
        args = [a for a in argv if not a.startswith("-")]
        for a in args:
            if a.startswith("recipes/"):
                assert (ROOT / a).is_file(), f"README names {a}, which does not exist"
        if "-m" in argv and argv[argv.index("-m") + 1] not in ("venv", "pip", "pytest"):
            name = argv[argv.index("-m") + 1]
            module = importlib.import_module(name)
            if not hasattr(module, "main"):  # a package run by its __main__: the command module it calls
                module = importlib.import_module(f"{name}.command")
            with pytest.raises(SystemExit) as exit:
                module.main(["--help"])
            assert exit.value.code in (0, None), argv
            checked += 1
        if argv and argv[0] == "bidistill":
            assert cli_main(argv[1:2] + ["--help"]) == 0, argv
            checked += 1
    assert checked >= 3  # the README shows evaluate, upscale, complexity and the bidistill command


def test_bidistill_command_lists_and_dispatches(capsys, tmp_path):
    assert cli_main([]) == 0
    assert "train" in capsys.readouterr().out
    assert cli_main(["nonsense"]) == 2
    assert cli_main(["train", str(ROOT / "recipes" / "tiny.toml"), "--print-config",
                     "--set", f"run.output_dir=\"{tmp_path / 'x'}\""]) == 0
    assert '"output_dir"' in capsys.readouterr().out and not (tmp_path / "x").exists()
    assert cli_main(["push", str(tmp_path), "owner/name"]) == 1  # not a published folder: a clear error
    assert "not a published model folder" in capsys.readouterr().err


def test_public_api_is_exported():
    import pipeline

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None
    with pytest.raises(AttributeError):
        pipeline.no_such_thing  # noqa: B018


def test_every_console_script_points_at_a_function():
    """The commands pyproject.toml installs (`bidistill`, `bidistill-complexity`) resolve to callables."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function, None)), f"{name} = {target}"
