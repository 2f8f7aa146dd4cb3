"""Recipes: typed parsing, validation errors that name the file and key, overrides, shipped recipes."""

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, SHARED, TINY_STUDENT
from pipeline.preflight import load_checked, preflight
from pipeline.recipe import RecipeError, load_recipe


DIRECT = {"type": "direct", "steps": 3}
TEACHER = {"type": "teacher", "name": "t", "steps": 2}
SPD = {"type": "feature_distill", "name": "fd", "steps": 2}


@pytest.fixture
def write(make_recipe):
    """`write(*stages, **tables)`: the tiny student's recipe, one direct stage then `stages`, with `tables` merged."""
    return lambda *stages, **tables: make_recipe(stages=[DIRECT, *stages], **tables)


def test_valid_recipe_parses_into_types(write):
    r = load_recipe(write())
    assert r.stages[0].type == "direct" and r.stages[0].name == "direct" and r.stages[0].lr == 1e-4
    assert r.stages[0].betas == [0.9, 0.99] and r.run.seed == 10 and r.student.unet["base_channels"] == 16


def test_preflight_only_reads_the_recipe(write):
    recipe = load_recipe(write(TEACHER, dict(SPD, spd_weight=0.0, output_weight=1.0), teacher={"kind": "twin"}))
    assert [s.name for s in recipe.stages] == ["direct", "t", "fd"]  # names resolve when the recipe is built
    before = recipe.to_dict()
    checked = preflight(recipe)
    assert recipe.to_dict() == before and checked.recipe is recipe
    assert checked.process.name == "ddpm" and checked.student_config["num_train_timesteps"] == 2000


def test_parsing_needs_nothing_the_recipe_refers_to(write, tmp_path):
    """--print-config parses only: missing folders and teachers are pre-flight's to report."""
    missing = [f'data.train="{tmp_path / "missing"}"', 'teacher.path="/nonexistent/teacher"']
    recipe = load_recipe(write(), missing)
    assert recipe.data.train.endswith("missing")
    with pytest.raises(RecipeError, match=r"data.train: folder .*missing does not exist"):
        preflight(recipe)


def test_each_stage_type_has_its_own_settings(write):
    direct = load_recipe(write()).stages[0]
    assert not hasattr(direct, "spd_weight") and type(direct).type_name == "direct"
    with pytest.raises(RecipeError, match=r"stages\[1\].spd_weight: unknown key; a 'direct' stage's keys are"):
        load_recipe(write({"type": "direct", "name": "b", "steps": 2, "spd_weight": 0.1}))
    with pytest.raises(RecipeError, match=r"stages\[1\].xt_weight: unknown key; a 'feature_distill' stage's"):
        load_recipe(write(dict(SPD, xt_weight=1.0)))


def test_overrides_use_dotted_paths(write):
    r = load_recipe(write(), ["stages.0.steps=7", "run.seed=3", "run.name=hello", "stages.0.lr=0.5"])
    assert (r.stages[0].steps, r.run.seed, r.run.name, r.stages[0].lr) == (7, 3, "hello", 0.5)
    with pytest.raises(RecipeError, match="'4' is not a stage index"):
        load_recipe(write(), ["stages.4.steps=7"])


def stage(**settings) -> dict:
    return {"type": "direct", "name": "b", "steps": 2, **settings}


@pytest.mark.parametrize(
    "stages, tables, key, message",
    [
        ([], {"eval": {"num_steps": 3}}, "eval.num_steps", "unknown key"),
        ([{"type": "direct", "steps": 2, "lrr": 1.0}], {}, "stages[1].lrr", "unknown key"),
        ([stage(steps="ten")], {}, "stages[1].steps", "must be an integer"),
        ([stage(lr=-1.0)], {}, "stages[1].lr", "must be > 0"),
        ([{"type": "distill", "steps": 2}], {}, "stages[1].type", "must be one of"),
        ([{"type": ["direct"], "steps": 2}], {}, "stages[1].type", "must be one of"),
        ([{"type": "direct", "steps": 2}], {}, "stages[1].name", "used twice"),
        ([{"type": "feature_distill", "steps": 2}], {}, "stages[1].type", "needs a teacher"),
        ([], {"teacher": {"path": "/nonexistent/teacher"}}, "teacher.path", "is not a teacher folder"),
        ([], {"eval": {"lpips_backbone": "/nonexistent/alex.pth"}}, "eval.lpips_backbone", "does not exist"),
        ([], {"publish": {"push_to_hub": "noslash"}}, "publish.push_to_hub", "owner/name"),
        ([], {"optimizer": {"lr": 1}}, "optimizer", "unknown table"),
        # distillation mistakes stop before training
        ([], {"process": {"type": "ddim"}}, "process.type", "must be one of"),
        ([], {"process": {"type": "resshift", "kapa": 2.0}}, "process.kapa", "unknown ResShiftProcess setting"),
        ([], {"process": {"type": "resshift", "prediction_type": "epsilon"}}, "process", "prediction_type='epsilon'"),
        ([], {"teacher": {"kind": "resshift"}}, "teacher.kind", "must be one of"),
        ([TEACHER, SPD], {"teacher": {"kind": "sr3"}}, "stages[2].spd_weight",
         "needs a teacher whose features correspond"),
        ([TEACHER, SPD], {"teacher": {"kind": "twin"}}, "student.init_from_teacher",
         "set student.init_from_teacher = true"),
        ([TEACHER], {"teacher": {"kind": "twin", "unet": {"base_channels": 32}}}, "teacher.unet",
         "copies student.unet"),
        ([], {"student": {"init_from_teacher": True}}, "student.init_from_teacher", "needs a teacher before"),
        ([stage(name="../escape")], {}, "stages[1].name", "names folders"),
        ([stage(type="feature_distill", direct_weight=-1.0)], {}, "stages[1].direct_weight", "must be >= 0"),
        ([TEACHER, dict(SPD, spd_weight=0.0, direct_weight=0.0)], {"teacher": {"kind": "twin"}},
         "stages[2].direct_weight", "would have no loss"),
    ],
)
def test_errors_name_file_and_key(write, stages, tables, key, message):
    assert_recipe_error(write(*stages, **tables), key, message)


def assert_recipe_error(path, key: str, message: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_checked(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and message in str(err.value), str(err.value)


def test_bad_student_config_is_reported_with_its_field(write):
    path = write()
    with pytest.raises(RecipeError, match=r"student.unet: BiDiffSRUNet config: timestep_groups=0"):
        load_checked(path, ["student.unet.timestep_groups=0"])
    with pytest.raises(RecipeError, match=r"student.unet.widht: unknown BiDiffSRUNet argument"):
        load_checked(path, ["student.unet.widht=3"])


def test_missing_files_are_named(write, tmp_path):
    with pytest.raises(RecipeError, match="recipe file does not exist"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match=r"data.train: folder .*missing does not exist"):
        load_checked(write(), [f"data.train=\"{tmp_path / 'missing'}\""])
    (tmp_path / "broken.toml").write_text("[run\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(tmp_path / "broken.toml")


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data not present")
@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("*.toml")))
def test_shipped_recipes_parse(name, monkeypatch, tmp_path):
    """Every shipped recipe is valid once its training folder and teacher exist (the paper recipes point at DF2K
    and at teachers that other recipes train)."""
    import tomllib

    from teachers import ResShiftProcess, SR3UNet, Teacher

    monkeypatch.chdir(ROOT)
    overrides = [] if name in ("tiny.toml", "quickstart.toml") else [f"data.train=\"{SHARED / 'data' / 'Set14'}\""]
    if "released_resshift" in name or "realsr" in name:  # an imported ResShift teacher: a Swin UNet on VQ latents
        from pipeline.importers.resshift import vq_model
        from teachers import LatentResShiftProcess
        from teachers.swin_unet import SwinUNet

        vae = vq_model(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=3, embed_dim=3, n_embed=16, resolution=32)
        Teacher(SwinUNet(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                         attention_resolutions=(8,), swin_embed_dim=32, window_size=4, lq_size=8),
                LatentResShiftProcess().use_autoencoder(vae), degradation="realesrgan").save_pretrained(
                    tmp_path / "teacher")
        overrides.append(f"teacher.path=\"{tmp_path / 'teacher'}\"")
    elif tomllib.loads((ROOT / "recipes" / name).read_text()).get("teacher", {}).get("path"):
        Teacher(SR3UNet(base_channels=16, channel_mults=(1, 2), norm_groups=4), ResShiftProcess()).save_pretrained(
            tmp_path / "teacher")
        overrides.append(f"teacher.path=\"{tmp_path / 'teacher'}\"")
    init = tomllib.loads((ROOT / "recipes" / name).read_text()).get("student", {}).get("init")
    if init:  # a full-precision twin saved by an earlier run: its config is what the recipe check reads
        from students.bidiffsr import BiDiffSRUNet

        unet = tomllib.loads((ROOT / "recipes" / name).read_text())["student"]["unet"]
        with torch.device("meta"):
            BiDiffSRUNet(**BiDiffSRUNet.twin_config(dict(unet, num_train_timesteps=15))).save_config(tmp_path / "twin")
        save_file({"stand_in": torch.zeros(1)}, tmp_path / "twin" / "diffusion_pytorch_model.safetensors")
        overrides.append(f"student.init=\"{tmp_path / 'twin'}\"")
    assert load_checked(ROOT / "recipes" / name, overrides).recipe.stages



def test_student_timesteps_follow_the_process(write):
    path = write(process={"type": "resshift"})
    with pytest.raises(RecipeError, match=r"student.unet.num_train_timesteps: is 2000 but the process has 15 steps"):
        load_checked(path, ["student.unet.num_train_timesteps=2000"])
    assert load_checked(path).process.name == "resshift"


@pytest.fixture
def saved_teachers(tmp_path_factory):
    """Saved teacher folders: an SR3 teacher and the tiny student's twin on DDPM, and a twin on ResShift."""
    from students.bidiffsr import BiDiffSRUNet
    from teachers import DDPMProcess, ResShiftProcess, SR3UNet, Teacher

    root = tmp_path_factory.mktemp("teachers")
    twin = BiDiffSRUNet.twin_config(TINY_STUDENT)
    Teacher(SR3UNet(base_channels=16, channel_mults=(1, 2), norm_groups=4), DDPMProcess()).save_pretrained(root / "sr3")
    Teacher(BiDiffSRUNet(**twin), DDPMProcess()).save_pretrained(root / "twin")
    Teacher(BiDiffSRUNet(**dict(twin, base_channels=32)), DDPMProcess()).save_pretrained(root / "wide")
    Teacher(BiDiffSRUNet(**dict(twin, num_train_timesteps=15)), ResShiftProcess()).save_pretrained(root / "resshift")
    return root


@pytest.mark.parametrize(
    "teacher, stages, tables, key, message",
    [
        ("resshift", [], {"process": {"type": "ddpm"}}, "process.type", "lives on the 'resshift' process"),
        ("twin", [], {"process": {"type": "ddpm", "beta_end": 0.02}}, "process.beta_end", "trained with 0.01"),
        ("sr3", [], {"student": {"init_from_teacher": True}}, "student.init_from_teacher",
         "SR3UNet, not the student's"),
        ("wide", [], {"student": {"init_from_teacher": True}}, "student.init_from_teacher",
         "its base_channels is 32 but student.unet.base_channels is 16"),
        ("sr3", [SPD], {"student": {"init": "{init}"}}, "stages[1].spd_weight", "SR3UNet"),
        ("twin", [dict(SPD, patch_size=36)], {"student": {"init_from_teacher": True}}, "stages[1].patch_size",
         "multiple of 8"),
    ],
)
def test_loaded_teacher_mismatches_name_the_key(write, saved_teachers, teacher, stages, tables, key, message,
                                                tmp_path):
    from students.bidiffsr import BiDiffSRUNet

    init = tmp_path / "student"  # the recipe's student
    BiDiffSRUNet(**TINY_STUDENT).save_pretrained(init)
    if tables.get("student", {}).get("init"):
        tables = dict(tables, student={"init": init})
    path = write(*stages, teacher={"path": saved_teachers / teacher}, **tables)
    assert_recipe_error(path, key, message)


def test_a_loaded_teachers_process_is_used_when_the_recipe_names_none(write, saved_teachers):
    path = write(SPD, teacher={"path": saved_teachers / "resshift"}, student={"init_from_teacher": True})
    from pipeline.preflight import build_recipe_process, student_unet_config

    recipe = load_recipe(path)
    process = build_recipe_process(recipe)
    assert process.name == "resshift" and student_unet_config(recipe, process)["num_train_timesteps"] == 15


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_numbers_are_refused(write, value):
    with pytest.raises(RecipeError, match=r"stages\[0\].lr: must be a finite number"):
        load_checked(write(), [f"stages.0.lr={value}"])


def test_validation_mistakes_are_found_before_training(write, tmp_path):
    from PIL import Image

    val = tmp_path / "val"
    val.mkdir()
    path = write()
    with pytest.raises(RecipeError, match=r"data.val: folder .*val holds no images"):
        load_checked(path, [f'data.val="{val}"'])
    Image.new("RGB", (40, 24)).save(val / "small.png")
    with pytest.raises(RecipeError, match=r"data.val_crop: is 32 but validation image .*small.png is only 40x24"):
        load_checked(path, [f'data.val="{val}"', "data.val_crop=32"])
    assert load_checked(path, [f'data.val="{val}"', "data.val_crop=24"]).recipe.data.val_crop == 24
    with pytest.raises(RecipeError,
                       match=r"eval.tile_size: must be 0 \(the process's default\) or >= 64"):
        load_checked(path, ["eval.tile_size=63"])
