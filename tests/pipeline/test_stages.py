"""Stage types are plug-ins: a StageConfig subclass declared with a type name is a recipe's stage type, with its own
settings and checks, and the trainer runs it without knowing it."""

from dataclasses import dataclass

import pytest

from pipeline.recipe import RecipeError, load_recipe
from pipeline.settings import require
from pipeline.stages import STAGE_CONFIGS, DirectStage, StageConfig
from pipeline.trainer import Trainer


@pytest.fixture
def scaled_stage():
    """A stage type defined here, outside the package: the process loss times `factor`."""

    class ScaledDirect(DirectStage):
        def __init__(self, process, factor: float):
            super().__init__(process)
            self.factor = factor

        def loss(self, model, batch, generator):
            loss, _ = super().loss(model, batch, generator)
            return self.factor * loss, {"loss": (self.factor * loss).detach()}

    @dataclass
    class ScaledDirectConfig(StageConfig, type_name="scaled_direct"):
        factor: float = 1.0

        def check(self, key: str) -> None:
            super().check(key)
            require(self.factor > 0, f"{key}.factor", f"must be > 0, got {self.factor}")

        def build(self, process, model, teacher):
            return ScaledDirect(process, self.factor)

    yield ScaledDirectConfig
    del STAGE_CONFIGS["scaled_direct"]


def test_a_stage_type_defined_anywhere_parses_checks_and_trains(scaled_stage, make_recipe, tmp_path):
    stages = [{"type": "scaled_direct", "steps": 2, "batch_size": 2, "factor": 0.5}]
    recipe = load_recipe(make_recipe(stages=stages, eval={"enabled": False}))
    assert type(recipe.stages[0]) is scaled_stage and recipe.stages[0].factor == 0.5
    with pytest.raises(RecipeError, match=r"stages\[0\].factor: must be > 0, got -1.0"):
        load_recipe(make_recipe(stages=[dict(stages[0], factor=-1.0)]))
    with pytest.raises(RecipeError, match=r"stages\[0\].spd_weight: unknown key; a 'scaled_direct' stage's keys"):
        load_recipe(make_recipe(stages=[dict(stages[0], spd_weight=0.1)]))
    Trainer(recipe).run()
    weights = tmp_path / "r" / "student" / "diffusion_pytorch_model.safetensors"
    assert weights.is_file() and (tmp_path / "r" / "stages" / "0-scaled_direct").is_dir()


def test_every_shipped_stage_type_is_registered():
    assert set(STAGE_CONFIGS) >= {"teacher", "direct", "feature_distill", "one_step"}
    assert STAGE_CONFIGS["teacher"].trains_teacher and STAGE_CONFIGS["one_step"].needs_teacher
