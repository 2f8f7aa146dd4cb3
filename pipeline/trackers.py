"""What the run reports to its trackers (tensorboard, wandb) beyond the training scalars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from PIL import Image

from pipeline.recipe import Recipe
from pipeline.run_folder import flat_dict


def tracker_config(recipe: Recipe) -> dict:
    """The recipe as flat scalars for the trackers (lists as JSON text)."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flat_dict(recipe.to_dict()).items()}


def log_evaluation(accelerator: Accelerator, result: dict, grid: Path, step: int) -> None:
    """Evaluation metrics and the sample grid (a PNG) to the run's trackers."""
    accelerator.log({f"eval/{method}/{k}": v for method, row in result["mean"].items() for k, v in row.items()
                     if v is not None}, step=step)
    if not grid.is_file():
        return
    image = np.asarray(Image.open(grid).convert("RGB"))
    for tracker in accelerator.trackers:  # the two trackers take images in different shapes
        if tracker.name == "tensorboard":
            tracker.log_images({"eval/samples": image[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"eval/samples": [image]}, step=step)
