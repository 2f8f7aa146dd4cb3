"""Shared fixtures and helpers: tiny student configurations that run in milliseconds on a CPU, recipe files built
from tables, a clean environment for training subprocesses."""

import os
import tempfile

# Never read a user's Hugging Face cache or accelerate config, and never reach for the network.
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="bidistill-hf-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

TINY_STUDENT = dict(
    base_channels=16,
    channel_mults=(1, 2),
    num_res_blocks=1,
    norm_groups=4,
    image_size=32,
    fp_resolutions=(32,),
    num_train_timesteps=2000,
    timestep_groups=5,
    dropout=0.0,
)


@pytest.fixture
def tiny_config() -> dict:
    return dict(TINY_STUDENT)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def make_recipe(tmp_path):
    """`make_recipe(name="r", **tables) -> Path`: a recipe file for the tiny student (tests/recipe_builder.py)."""
    from recipe_builder import write_recipe

    return lambda name="r", **tables: write_recipe(tmp_path, name, **tables)


def subprocess_env(tmp_path) -> dict:
    """A clean environment for a training process. One thread each: some tests run two processes at once, and two
    OpenMP pools spin-waiting on a 2-core machine slow both many times over (the runs compared share this setting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=str(ROOT), TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    return env
