"""Recipes: typed parsing, validation errors that name the file and key, overrides, shipped recipes."""

from pathlib import Path

import pytest

from pipeline.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

BASE = """
[run]
output_dir = "{out}"
[data]
train = "{train}"
patch_size = 32
[student.unet]
base_channels = 16
channel_mults = [1, 2]
norm_groups = 4
image_size = 32
fp_resolutions = [32]
[[stages]]
type = "direct"
steps = 3
"""


@pytest.fixture
def write(tmp_path):
    train = tmp_path / "train"
    train.mkdir()

    def _write(extra: str = "", base: str = BASE) -> Path:
        path = tmp_path / "r.toml"
        path.write_text(base.format(out=tmp_path / "out", train=train) + extra)
        return path

    return _write


def test_valid_recipe_parses_into_types(write):
    r = load_recipe(write())
    assert r.stages[0].type == "direct" and r.stages[0].name == "direct" and r.stages[0].lr == 1e-4
    assert r.stages[0].betas == [0.9, 0.99] and r.run.seed == 10 and r.student.unet["base_channels"] == 16


def test_overrides_use_dotted_paths(write):
    r = load_recipe(write(), ["stages.0.steps=7", "run.seed=3", "run.name=hello", "stages.0.lr=0.5"])
    assert (r.stages[0].steps, r.run.seed, r.run.name, r.stages[0].lr) == (7, 3, "hello", 0.5)
    with pytest.raises(RecipeError, match="'4' is not a stage index"):
        load_recipe(write(), ["stages.4.steps=7"])


@pytest.mark.parametrize(
    "extra, key, message",
    [
        ("[eval]\nnum_steps = 3\n", "eval.num_steps", "unknown key"),
        ("[[stages]]\ntype = \"direct\"\nsteps = 2\nlrr = 1.0\n", "stages[1].lrr", "unknown key"),
        ("[[stages]]\ntype = \"direct\"\nname = \"b\"\nsteps = \"ten\"\n", "stages[1].steps", "must be an integer"),
        ("[[stages]]\ntype = \"direct\"\nname = \"b\"\nsteps = 2\nlr = -1.0\n", "stages[1].lr", "must be > 0"),
        ("[[stages]]\ntype = \"distill\"\nsteps = 2\n", "stages[1].type", "must be one of"),
        ("[[stages]]\ntype = \"direct\"\nsteps = 2\n", "stages[1].name", "used twice"),
        ("[[stages]]\ntype = \"feature_distill\"\nsteps = 2\n", "stages[1].type", "needs a teacher"),
        ("[teacher]\npath = \"/nonexistent/teacher\"\n", "teacher.path", "is not a teacher folder"),
        ("[eval]\nlpips_backbone = \"/nonexistent/alex.pth\"\n", "eval.lpips_backbone", "does not exist"),
        ("[publish]\npush_to_hub = \"noslash\"\n", "publish.push_to_hub", "owner/name"),
        ("[optimizer]\nlr = 1\n", "optimizer", "unknown table"),
    ],
)
def test_errors_name_file_and_key(write, extra, key, message):
    path = write(extra)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and message in str(err.value)


def test_bad_student_config_is_reported_with_its_field(write):
    path = write()
    with pytest.raises(RecipeError, match=r"student.unet: BIDiffSRUNet config: timestep_groups=0"):
        load_recipe(path, ["student.unet.timestep_groups=0"])
    with pytest.raises(RecipeError, match=r"student.unet.widht: unknown BIDiffSRUNet argument"):
        load_recipe(path, ["student.unet.widht=3"])


def test_missing_files_are_named(write, tmp_path):
    with pytest.raises(RecipeError, match="recipe file does not exist"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match=r"data.train: folder .*missing does not exist"):
        load_recipe(write(), [f"data.train=\"{tmp_path / 'missing'}\""])
    (tmp_path / "broken.toml").write_text("[run\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(tmp_path / "broken.toml")


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data not present")
@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("*.toml")))
def test_shipped_recipes_parse(name, monkeypatch):
    """Every shipped recipe is valid once its training folder exists (the paper recipes point at DF2K)."""
    monkeypatch.chdir(ROOT)
    overrides = [] if name in ("tiny.toml", "quickstart.toml") else [f"data.train=\"{SHARED / 'data' / 'Set14'}\""]
    recipe = load_recipe(ROOT / "recipes" / name, overrides)
    assert recipe.stages
