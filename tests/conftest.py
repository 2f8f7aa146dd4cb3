"""Shared fixtures: tiny student configurations that run in milliseconds on a CPU."""

import os
import tempfile

# Never read a user's Hugging Face cache or accelerate config, and never reach for the network.
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="bidistill-hf-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

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

# The same student as a recipe table, for recipes the tests write.
TINY_UNET_TOML = """[student.unet]
base_channels = 16
channel_mults = [1, 2]
num_res_blocks = 1
norm_groups = 4
image_size = 32
fp_resolutions = [32]
"""


@pytest.fixture
def tiny_config() -> dict:
    return dict(TINY_STUDENT)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
