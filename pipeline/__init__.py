"""The distillation pipeline: recipes, data, staged Accelerate training, evaluation and publishing.

The public API, for notebooks (imported on first use, so `import pipeline` stays light):

    from pipeline import BiDiffSRPipeline, Trainer, load_recipe, load_student, load_validation, write_model_folder
    Trainer(load_recipe("recipes/quickstart.toml", ["stages.0.steps=100"])).run()  # checks the recipe's files first
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BiDiffSRPipeline": "pipeline.sr_pipeline",
    "Recipe": "pipeline.recipe",
    "RecipeError": "pipeline.recipe",
    "load_recipe": "pipeline.recipe",
    "Trainer": "pipeline.trainer",
    "preflight": "pipeline.preflight",
    "load_student": "pipeline.loading",
    "load_validation": "pipeline.data",
    "psnr_y": "pipeline.metrics",
    "ssim_y": "pipeline.metrics",
    "load_lpips": "pipeline.metrics",
    "write_model_folder": "pipeline.publish",
    "push_folder": "pipeline.publish",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
