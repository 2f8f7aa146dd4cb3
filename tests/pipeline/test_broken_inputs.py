"""Broken inputs, table-driven, through the commands users run (`pipeline/run.py`, `pipeline.upscale`,
`pipeline.evaluate`): each case ends with its exit status and a message naming the key or file at fault, before any
training step, and nothing outside the run's output folder changes (the sandbox's files are hashed before and
after). Kills, resumes and NaN losses are tested in test_trainer.py and test_run_folder.py."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safetensors.torch import load_file, save_file

from pipeline import evaluate as evaluate_cli
from pipeline import upscale as upscale_cli
from pipeline.run import main as run_main
from students.checksums import write_checksums
from pipeline.run_folder import RunFolder
from recipe_builder import TINY_UNET, merged, toml_text

SPD = {"type": "feature_distill", "name": "spd", "steps": 2, "batch_size": 2}
TEACHER = {"type": "teacher", "name": "t", "steps": 2, "batch_size": 2}


def sandbox_recipe(path: Path, sandbox: Path, out: Path, stages=(), **tables) -> Path:
    """The tiny student trained directly for 2 steps on the sandbox's photos into `out`, then `stages`."""
    base = {"run": {"output_dir": out, "log_with": [], "checkpoint_every": 2},
            "data": {"train": sandbox / "train", "patch_size": 32, "num_workers": 0, "val": sandbox / "val",
                     "val_crop": 32},
            "student": {"unet": TINY_UNET},
            "stages": [{"type": "direct", "steps": 2, "batch_size": 2}, *stages],
            "eval": {"lpips": False, "num_inference_steps": 2, "grid_images": 0}}
    path.write_text(toml_text(merged(base, tables)))
    return path


def photo(seed: int, size: int) -> Image.Image:
    """A smooth random colour image (what a photo looks like to a bicubic kernel)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


def digest(root: Path, skip: Path) -> dict[str, str]:
    """sha256 of every file under `root` except those under `skip` (the case's own output folder)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and skip not in p.parents}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """Training and validation photos, saved teachers of several kinds, a user's folder and a finished run."""
    from students.bidiffsr import BiDiffSRUNet
    from teachers import DDPMProcess, ResShiftProcess, SR3UNet, Teacher

    s = tmp_path_factory.mktemp("sandbox")
    for name, images in {"train": [photo(i, 96) for i in range(3)], "val": [photo(9, 64)]}.items():
        (s / name).mkdir()
        for i, image in enumerate(images):
            image.save(s / name / f"{i}.png")
    (s / "empty").mkdir()
    (s / "unreadable").mkdir()
    (s / "unreadable" / "a.png").write_bytes(b"not an image")
    (s / "user").mkdir()
    (s / "user" / "thesis.txt").write_text("years of work")
    (s / "a_file").write_text("a user's file")
    (s / "not_a_student").mkdir()
    twin = BiDiffSRUNet.twin_config(dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4,
                                         image_size=32, fp_resolutions=(32,)))
    teachers = {"twin": (BiDiffSRUNet(**twin), DDPMProcess()),
                "wide": (BiDiffSRUNet(**dict(twin, base_channels=32)), DDPMProcess()),
                "resshift": (BiDiffSRUNet(**dict(twin, num_train_timesteps=15)), ResShiftProcess()),
                "sr3": (SR3UNet(base_channels=16, channel_mults=(1, 2), norm_groups=4), DDPMProcess())}
    for name, (unet, process) in teachers.items():
        Teacher(unet, process).save_pretrained(s / "teachers" / name)
    sandbox_recipe(s / "recipe.toml", s, s / "finished")
    assert run_main([str(s / "recipe.toml")]) == 0
    (s / "lr").mkdir()
    photo(3, 16).save(s / "lr" / "pic.png")
    photo(4, 16).save(s / "lr" / "pic.jpg")
    photo(5, 16).save(s / "lr2.png")
    (s / "sr.png").write_bytes(b"an earlier result")
    damaged = s / "damaged_model"
    shutil.copytree(s / "finished" / "publish", damaged)
    flip_a_bit(damaged / "unet" / "diffusion_pytorch_model.safetensors")
    nan_model = s / "nan_model"  # a published model holding a NaN, its checksums made again
    shutil.copytree(s / "finished" / "publish", nan_model)
    state = load_file(nan_model / "unet" / "diffusion_pytorch_model.safetensors")
    next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    save_file(state, nan_model / "unet" / "diffusion_pytorch_model.safetensors")
    write_checksums(nan_model)
    tiny = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4, image_size=32,
                fp_resolutions=(32,))
    BiDiffSRUNet(**dict(tiny, base_channels=32)).save_pretrained(s / "students" / "wide")
    BiDiffSRUNet(**dict(tiny, num_train_timesteps=15)).save_pretrained(s / "students" / "t15")
    shutil.copytree(s / "nan_model" / "unet", s / "students" / "nan")
    shutil.copytree(s / "finished" / "stages" / "0-direct", s / "students" / "flipped")
    flip_a_bit(s / "students" / "flipped" / "diffusion_pytorch_model.safetensors")
    (s / "tiny_val").mkdir()
    photo(6, 16).save(s / "tiny_val" / "0.png")
    (s / "bad_utf8.toml").write_bytes(b"[run]\nname = \"caf\xe9\"\n")
    (s / "users_results").mkdir()
    (s / "users_results" / "metrics.json").write_text('{"mine": 1}')
    (s / "dangling.png").symlink_to(s / "nowhere.png")
    (s / "latin1").mkdir()
    photo(7, 96).save(s / "latin1" / os.fsdecode(b"caf\xe9.png"))
    return s


def flip_a_bit(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


@dataclass
class Case:
    id: str
    args: list[str]                  # {S}: the sandbox; {out}: this case's output folder; {recipe}: its recipe
    expect: list[str]                # fragments of the message, key and file names included
    rc: int = 2
    stages: tuple = ()               # stages after the base recipe's direct one
    tables: dict = field(default_factory=dict)  # merged into the base recipe
    command: str = "run"
    setup: object = field(default=None, repr=False)


RUN = ["{recipe}"]
RUN_CASES = [
    Case("missing recipe", ["{S}/nope.toml"], ["{S}/nope.toml", "recipe file does not exist"]),
    Case("unknown key", RUN + ["--set", "stages.0.lrr=1"], ["stages[0].lrr: unknown key"]),
    Case("bad override", RUN + ["--set", "stages.0.steps"], ["stages.0.steps: an override must look like"]),
    Case("wrong type", RUN + ["--set", 'stages.0.steps="ten"'], ["stages[0].steps: must be an integer"]),
    Case("infinite lr", RUN + ["--set", "stages.0.lr=inf"], ["stages[0].lr: must be a finite number"]),
    Case("nan ema decay", RUN + ["--set", "stages.0.ema_decay=nan"], ["stages[0].ema_decay: must be a finite"]),
    Case("another stage type's setting", RUN + ["--set", "stages.0.output_weight=1.0"],
         ["stages[0].output_weight: unknown key; a 'direct' stage's keys are"]),
    Case("scale", RUN + ["--set", "run.scale=5"], ["run.scale: must be 2, 3, 4 or 8"]),
    Case("stage name escapes", RUN + ["--set", 'stages.0.name="../user"'], ["stages[0].name", "names folders"]),
    Case("output is a user's folder", RUN + ["--set", 'run.output_dir="{S}/user"'],
         ["{S}/user", "already holds files that BiDistill did not write"]),
    Case("output is a file", RUN + ["--set", 'run.output_dir="{S}/a_file"'], ["{S}/a_file is a file"]),
    Case("missing training folder", RUN + ["--set", 'data.train="{S}/gone"'], ["data.train: folder {S}/gone"]),
    Case("empty training folder", RUN + ["--set", 'data.train="{S}/empty"'],
         ["data.train", "{S}/empty holds no images"]),
    Case("unreadable training images", RUN + ["--set", 'data.train="{S}/unreadable"'],
         ["data.train", "can be read", "{S}/unreadable/a.png"]),
    Case("patch larger than every image", RUN + ["--set", "data.patch_size=128"], ["data.patch_size: is 128", "96px"]),
    Case("stage patch larger than every image", RUN + ["--set", "stages.0.patch_size=200"],
         ["stages[0].patch_size: is 200"]),
    Case("empty validation folder", RUN + ["--set", 'data.val="{S}/empty"'], ["data.val", "{S}/empty holds no images"]),
    Case("validation crop too large", RUN + ["--set", "data.val_crop=100"], ["data.val_crop: is 100", "{S}/val/0.png"]),
    Case("missing LPIPS weights", RUN + ["--set", 'eval.lpips_backbone="{S}/alex.pth"'],
         ["eval.lpips_backbone", "{S}/alex.pth does not exist"]),
    Case("tile size", RUN + ["--set", "eval.tile_size=50"],
         ["eval.tile_size: must be 0 (the process's default) or >= 64"]),
    Case("hub id", RUN + ["--set", 'publish.push_to_hub="noslash"'], ["publish.push_to_hub", "owner/name"]),
    Case("a push without credentials", RUN + ["--set", 'publish.push_to_hub="me/model"'],
         ["publish.push_to_hub", "no Hugging Face credentials", "before training"]),
    Case("resume from nowhere", RUN + ["--set", 'run.resume="{S}/nowhere"'], ["run.resume", "{S}/nowhere"]),
    Case("unknown process", RUN + ["--set", 'process.type="ddim"'], ["process.type: must be one of"]),
    Case("unknown process setting", RUN, ["process.kapa: unknown ResShiftProcess setting"],
         tables={"process": {"type": "resshift", "kapa": 2.0}}),
    Case("student.init not a student", RUN + ["--set", 'student.init="{S}/not_a_student"'],
         ["student.init", "{S}/not_a_student is not a saved student"]),
    Case("teacher.path not a teacher", RUN + ["--set", 'teacher.path="{S}/user"'],
         ["teacher.path", "{S}/user is not a teacher folder"]),
    Case("teacher on another process", RUN + ["--set", 'teacher.path="{S}/teachers/resshift"'],
         ["process.type", "lives on the 'resshift' process"], tables={"process": {"type": "ddpm"}}),
    Case("teacher of another width", RUN + ["--set", 'teacher.path="{S}/teachers/wide"',
                                            "--set", "student.init_from_teacher=true"],
         ["student.init_from_teacher", "base_channels is 32 but student.unet.base_channels is 16"]),
    Case("SPD against an unrelated teacher", RUN + ["--set", 'teacher.path="{S}/teachers/sr3"'],
         ["stages[1].spd_weight", "SR3UNet"], stages=(SPD,)),
    Case("SPD without starting from the teacher", RUN + ["--set", 'teacher.path="{S}/teachers/twin"'],
         ["student.init_from_teacher", "set student.init_from_teacher = true"], stages=(SPD,)),
    Case("SPD grid does not divide the patch", RUN + ["--set", 'teacher.path="{S}/teachers/twin"',
                                                      "--set", "student.init_from_teacher=true"],
         ["stages[1].patch_size", "multiple of 8"], stages=(dict(SPD, patch_size=36),)),
    Case("distillation without a teacher", RUN, ["stages[1].type", "needs a teacher"], stages=(SPD,)),
    Case("teacher stage and teacher.path", RUN + ["--set", 'teacher.path="{S}/teachers/twin"'],
         ["stages[1].type", "remove teacher.path"], stages=(TEACHER,)),
    Case("start from a teacher that comes later", RUN + ["--set", "student.init_from_teacher=true"],
         ["student.init_from_teacher", "needs a teacher before the first student stage"], stages=(TEACHER,)),
    Case("a changed recipe on a finished run", RUN + ["--set", 'run.output_dir="{S}/finished"', "--set",
                                                      "stages.0.steps=3"],
         ["stage 0 (direct) in {S}/finished", "different recipe (stage.steps: 2 -> 3)", 'run.resume = "never"']),
    Case("a run already using the folder", RUN, ["another run (pid", "is using {out}"],
         setup=lambda out: RunFolder(out).claim()),
    Case("a dry run while another run uses the folder", RUN + ["--dry-run"], ["another run (pid", "is using {out}"],
         setup=lambda out: RunFolder(out).claim()),
    Case("a learning rate that breaks the weights", RUN + ["--set", "stages.0.lr=1e300", "--set", "stages.0.steps=1"],
         ["stage 0 (direct)", "the weights became non-finite by step 1", "No checkpoint of this stage has finite"],
         rc=1),
    Case("student.init wider than the recipe's", RUN + ["--set", 'student.init="{S}/students/wide"'],
         ["student.init", "base_channels = 32, but this recipe's student has 16"]),
    Case("student.init on another chain", RUN + ["--set", 'student.init="{S}/students/t15"'],
         ["student.init", "num_train_timesteps = 15, but this recipe's student has 2000"]),
    Case("student.init with a flipped bit", RUN + ["--set", 'student.init="{S}/students/flipped"'],
         ["student.init", "{S}/students/flipped is damaged", "does not match its checksum"]),
    Case("student.init holding a NaN", RUN + ["--set", 'student.init="{S}/students/nan"'],
         ["student.init", "holds NaN or infinite weights"]),
    Case("run name escapes", RUN + ["--set", 'run.name="../escaped"'], ["run.name", "names folders and logs"]),
    Case("seed out of range", RUN + ["--set", "run.seed=-1"], ["run.seed: must be in [0, 2^32 - 1], got -1"]),
    Case("fp16 on a CPU", RUN + ["--set", 'run.mixed_precision="fp16"'], ["run.mixed_precision", "needs a GPU"]),
    Case("output inside the training folder", RUN + ["--set", 'run.output_dir="{S}/train/run"'],
         ["run.output_dir", "is inside data.train"]),
    Case("negative grid images", RUN + ["--set", "eval.grid_images=-1"], ["eval.grid_images: must be >= 0"]),
    Case("evaluation steps out of range", RUN + ["--set", "eval.num_inference_steps=5000"],
         ["eval.num_inference_steps", "num_inference_steps=5000 must be between 1 and 2000"]),
    Case("an SPD feature that does not exist", RUN + ["--set", 'teacher.path="{S}/teachers/twin"',
                                                      "--set", "student.init_from_teacher=true"],
         ["stages[1].features", "'down.9.9' is not a res-block feature", "down.0.0"],
         stages=(dict(SPD, features=["down.9.9"]),)),
    Case("a stage name too long for a file name", RUN + ["--set", f'stages.0.name="{"a" * 300}"'],
         ["stages[0].name", "must be 1-100 letters"]),
    Case("a recipe that is not UTF-8", ["{S}/bad_utf8.toml"], ["{S}/bad_utf8.toml", "not UTF-8 text"]),
    Case("an override into a value", RUN + ["--set", "stages.0.steps.x=1"],
         ["stages.0.steps.x", "'stages.0.steps' is a value"]),
    Case("a training file name that is not UTF-8", RUN + ["--set", 'data.train="{S}/latin1"'],
         ["data.train", "{S}/latin1: the file name", "is not UTF-8; rename it"]),
    Case("validation images too small for SSIM", RUN + ["--set", 'data.val="{S}/tiny_val"', "--set", "data.val_crop=0"],
         ["data.val", "at least 19 pixels a side", "{S}/tiny_val/0.png gives 16"]),
]

UPSCALE = ["--model", "{S}/finished/publish", "--steps", "1"]
UPSCALE_CASES = [
    Case("output is the input", ["{S}/lr2.png", "{S}/lr2.png"] + UPSCALE,
         ["output {S}/lr2.png would overwrite the input"], command="upscale"),
    Case("output folder is the input folder", ["{S}/lr", "{S}/lr"] + UPSCALE, ["would overwrite the input"],
         command="upscale"),
    Case("two inputs, one output", ["{S}/lr", "{out}"] + UPSCALE, ["pic.jpg", "pic.png", "would both be written"],
         command="upscale"),
    Case("existing output", ["{S}/lr2.png", "{S}/sr.png"] + UPSCALE, ["output {S}/sr.png exists", "--overwrite"],
         command="upscale"),
    Case("missing input", ["{S}/nothing.png", "{out}"] + UPSCALE, ["input {S}/nothing.png does not exist"],
         command="upscale"),
    Case("input folder without images", ["{S}/empty", "{out}"] + UPSCALE, ["{S}/empty holds no images"],
         command="upscale"),
    Case("unreadable input", ["{S}/unreadable", "{out}"] + UPSCALE, ["cannot read", "{S}/unreadable/a.png"],
         command="upscale"),
    Case("damaged model", ["{S}/lr2.png", "{out}/sr.png", "--model", "{S}/damaged_model"],
         ["--model {S}/damaged_model", "is damaged", "diffusion_pytorch_model.safetensors does not match"], rc=1,
         command="upscale"),
    Case("missing model", ["{S}/lr2.png", "{out}/sr.png", "--model", "{S}/no_model"], ["--model {S}/no_model"], rc=1,
         command="upscale"),
    Case("a teacher folder as the model", ["{S}/lr2.png", "{out}/sr.png", "--model", "{S}/teachers/twin"],
         ["--model {S}/teachers/twin", "holds a 'Teacher', not a published student", "pipeline.evaluate --teacher"],
         rc=1, command="upscale"),
    Case("a model holding a NaN", ["{S}/lr2.png", "{out}/sr.png", "--model", "{S}/nan_model"],
         ["--model {S}/nan_model", "holds NaN or infinite weights"], rc=1, command="upscale"),
    Case("evaluate: a student holding a NaN", ["--student", "{S}/nan_model", "--val", "{S}/val", "--scale", "4",
                                               "--no-lpips"], ["{S}/nan_model", "holds NaN or infinite weights"],
         command="evaluate"),
    Case("evaluate: another scale than the student's", ["--student", "{S}/finished/publish", "--val", "{S}/val",
                                                        "--scale", "2", "--no-lpips"],
         ["{S}/finished/publish is an x4 student but --scale is 2"], command="evaluate"),
    Case("evaluate: negative image count", ["--val", "{S}/val", "--scale", "4", "--max-images", "-1", "--no-lpips"],
         ["--max-images must be >= 0, got -1"], command="evaluate"),
    Case("steps the model's process does not have", ["{S}/lr2.png", "{out}/sr.png"] + UPSCALE[:2] + ["--steps", "5000"],
         ["--steps 5000", "must be between 1 and 2000"], command="upscale"),
    Case("an output that links to nothing", ["{S}/lr2.png", "{S}/dangling.png"] + UPSCALE,
         ["output {S}/dangling.png is a link to nothing"], command="upscale"),
    Case("evaluate: a user's results in --out", ["--val", "{S}/val", "--scale", "4", "--no-lpips", "--out",
                                                 "{S}/users_results"],
         ["--out {S}/users_results holds a metrics.json or samples.png that no evaluation wrote"], command="evaluate"),
    Case("evaluate: missing validation folder", ["--val", "{S}/gone", "--scale", "4", "--no-lpips"],
         ["folder {S}/gone does not exist"], command="evaluate"),
    Case("evaluate: not a student", ["--student", "{S}/user", "--val", "{S}/val", "--scale", "4", "--no-lpips"],
         ["{S}/user is neither a saved student"], command="evaluate"),
    Case("evaluate: teacher of another scale", ["--teacher", "{S}/teachers/twin", "--val", "{S}/val", "--scale", "2",
                                                "--no-lpips"], ["trained for x4", "--scale is x2"], command="evaluate"),
]

COMMANDS = {"run": run_main, "upscale": upscale_cli.main, "evaluate": evaluate_cli.main}


@pytest.mark.parametrize("case", RUN_CASES + UPSCALE_CASES, ids=lambda c: c.id)
def test_broken_input_is_named_and_nothing_else_changes(case: Case, sandbox: Path, capsys):
    out = sandbox / "out" / case.id.replace(" ", "_").replace(":", "")
    recipe = sandbox / "recipes" / f"{out.name}.toml"
    recipe.parent.mkdir(exist_ok=True)
    sandbox_recipe(recipe, sandbox, out, case.stages, **case.tables)
    held = case.setup(out) if case.setup else None
    before = digest(sandbox, skip=out)
    capsys.readouterr()
    argv = [a.format(S=sandbox, out=out, recipe=recipe) for a in case.args]
    try:
        try:
            rc = COMMANDS[case.command](argv)
        except SystemExit as exit:  # argparse's parser.error
            rc = exit.code
    finally:
        if held is not None:
            held.release()
    said = capsys.readouterr()
    message = said.err + said.out
    assert rc == case.rc, message
    for fragment in case.expect:
        assert fragment.format(S=sandbox, out=out) in message, message
    assert "Traceback" not in message
    assert digest(sandbox, skip=out) == before
    assert not (out / "stages").exists() and not (out / "checkpoints").exists()  # nothing was trained


def test_upscale_never_replaces_an_output_another_run_wrote_meanwhile(sandbox: Path, tmp_path, monkeypatch, capsys):
    from pipeline.sr_pipeline import BiDiffSRPipeline

    out = tmp_path / "sr.png"
    real_call = BiDiffSRPipeline.__call__

    def another_run_finishes_first(self, *args, **kwargs):
        result = real_call(self, *args, **kwargs)
        out.write_bytes(b"the other run's result")
        return result

    monkeypatch.setattr(BiDiffSRPipeline, "__call__", another_run_finishes_first)
    argv = [str(sandbox / "lr2.png"), str(out), "--model", str(sandbox / "finished" / "publish"), "--steps", "1"]
    assert upscale_cli.main(argv) == 1
    assert "appeared while this image was upscaled" in capsys.readouterr().err
    assert out.read_bytes() == b"the other run's result" and [p.name for p in tmp_path.iterdir()] == ["sr.png"]


def test_upscale_writes_the_format_its_extension_names(sandbox: Path, tmp_path, capsys):
    argv = ["--model", str(sandbox / "finished" / "publish"), "--steps", "1"]
    assert upscale_cli.main([str(sandbox / "lr2.png"), str(tmp_path / "sr.jpg")] + argv) == 0
    assert (tmp_path / "sr.jpg").read_bytes()[:2] == b"\xff\xd8"  # JPEG data, not PNG
    with pytest.raises(SystemExit):
        upscale_cli.main([str(sandbox / "lr2.png"), str(tmp_path / "sr.txt")] + argv)
    assert ".txt is not an image format" in capsys.readouterr().err


def test_a_decompression_bomb_is_named_not_a_traceback(sandbox: Path, tmp_path, monkeypatch, capsys):
    """Pillow refuses images over 2 x MAX_IMAGE_PIXELS (a 225-Mpixel file); lowered here so a small file stands in."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    out = tmp_path / "run"
    recipe = tmp_path / "r.toml"
    sandbox_recipe(recipe, sandbox, out)
    assert run_main([str(recipe)]) == 2
    said = capsys.readouterr().err
    assert "data.train" in said and "can be read" in said and "Traceback" not in said
    with pytest.raises(SystemExit):
        upscale_cli.main([str(sandbox / "val" / "0.png"), str(tmp_path / "sr.png"), "--model",
                          str(sandbox / "finished" / "publish")])
    said = capsys.readouterr().err
    assert "cannot read" in said and "decompression bomb" in said.lower() and "Traceback" not in said


def test_a_file_added_to_a_published_folder_is_never_deleted_by_a_rerun(sandbox: Path, tmp_path, capsys):
    run = tmp_path / "finished"
    shutil.copytree(sandbox / "finished", run)
    (run / "publish" / "my_notes.txt").write_text("mine")
    recipe = tmp_path / "r.toml"
    sandbox_recipe(recipe, sandbox, run)
    assert run_main([str(recipe)]) == 2
    said = capsys.readouterr().err
    assert "holds files no publish wrote (my_notes.txt)" in said and "move them out first" in said
    assert (run / "publish" / "my_notes.txt").read_text() == "mine"


def test_upscale_takes_several_inputs_and_a_folder(sandbox: Path, tmp_path):
    argv = [str(sandbox / "lr2.png"), str(sandbox / "val" / "0.png"), str(tmp_path / "out"), "--model",
            str(sandbox / "finished" / "publish"), "--steps", "1"]
    assert upscale_cli.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "lr2.png"]


def test_upscale_usage_errors_come_before_torch_is_imported(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom pipeline.upscale import main\ntry:\n"
            "    main(['nowhere.png', 'out.png', '--model', 'm'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert "input nowhere.png does not exist" in result.stderr and result.stdout.strip() == "False"
