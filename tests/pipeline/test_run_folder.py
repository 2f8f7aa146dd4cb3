"""The output folder: never write into a user's folder, one run at a time, and no stage reused for another recipe."""

import hashlib
import shutil
from pathlib import Path

import pytest

from pipeline.recipe import load_recipe
from pipeline.run import main as run_main
from pipeline.run_folder import LOCK, RunFolder, RunFolderError
from pipeline.trainer import Trainer
from conftest import SHARED
from recipe_builder import write_recipe
from test_trainer import direct_recipe

pytestmark = pytest.mark.skipif(not (SHARED / "data" / "Set14").is_dir(), reason="../shared/data not present")


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_with_a_users_files_is_refused_and_left_as_it_was(tmp_path, capsys):
    recipe = direct_recipe(tmp_path, "mine", steps=2)
    mine = tmp_path / "mine"
    (mine / "student").mkdir(parents=True)
    (mine / "student" / "thesis.txt").write_text("years of work")
    (mine / "recipe.json").write_text("{}")
    before = digest(mine)
    assert run_main([str(recipe)]) == 2
    assert "already holds files that BiDistill did not write (recipe.json, student)" in capsys.readouterr().err
    assert digest(mine) == before and sorted(p.name for p in mine.iterdir()) == ["recipe.json", "student"]


def test_one_run_at_a_time_and_a_dead_runs_lock_is_taken_over(tmp_path):
    first = RunFolder(tmp_path / "run").claim()
    with pytest.raises(RunFolderError, match=r"another run \(pid \d+\) is using"):
        RunFolder(tmp_path / "run").claim()
    first.release()
    again = RunFolder(tmp_path / "run").claim()
    assert again.notice == ""
    again.release()
    (tmp_path / "run" / LOCK).write_text("999999")  # a killed run leaves its pid and no lock (the kernel dropped it)
    taken = RunFolder(tmp_path / "run").claim()
    assert "pid 999999 ended without releasing" in taken.notice
    taken.release()


def test_a_changed_recipe_never_reuses_finished_stages_or_checkpoints(tmp_path):
    recipe = direct_recipe(tmp_path, "run", steps=4, every=2)
    Trainer(load_recipe(recipe)).run()
    out = tmp_path / "run"
    finished = digest(out / "stages")

    Trainer(load_recipe(recipe)).run()  # the same recipe: the finished stage is reused
    with pytest.raises(RunFolderError, match=r"stage 0 \(direct\) in .* different recipe \(stage.steps: 4 -> 5\)"):
        Trainer(load_recipe(recipe, ["stages.0.steps=5"])).run()
    with pytest.raises(RunFolderError, match=r"models.student.base_channels: 16 -> 32"):
        Trainer(load_recipe(recipe, ["student.unet.base_channels=32"])).run()
    assert digest(out / "stages") == finished

    shutil.rmtree(out / "stages")  # only the step-2 checkpoint is left: it must not be resumed by another recipe
    with pytest.raises(RunFolderError, match=r"checkpoint .*step-00000002 was made by a different recipe \(stage.lr"):
        Trainer(load_recipe(recipe, ["stages.0.lr=0.002"])).run()
    Trainer(load_recipe(recipe, ["stages.0.lr=0.002", 'run.resume="never"'])).run()  # the explicit choice
    assert (out / "stages" / "0-direct").is_dir()


def test_a_damaged_checkpoint_is_named_and_the_newest_intact_one_is_used(tmp_path, capsys):
    """A truncated newest checkpoint and a byte-flipped stage folder are found by their checksums, not trained on."""
    recipe = direct_recipe(tmp_path, "run", steps=8, every=2)  # keeps step-4 and step-6
    Trainer(load_recipe(recipe)).run()
    out = tmp_path / "run"
    newest = out / "checkpoints" / "0-direct" / "step-00000006" / "model.safetensors"
    older = out / "checkpoints" / "0-direct" / "step-00000004"
    assert newest.is_file() and older.is_dir()

    stage = out / "stages" / "0-direct" / "diffusion_pytorch_model.safetensors"
    data = bytearray(stage.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stage.write_bytes(bytes(data))
    with pytest.raises(RunFolderError, match=r"stage 0 \(direct\) is damaged: .*diffusion_pytorch_model.safetensors "
                                             r"does not match its checksum.*Delete"):
        Trainer(load_recipe(recipe)).run()

    shutil.rmtree(out / "stages")
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    capsys.readouterr()
    trainer = Trainer(load_recipe(recipe))
    trainer.run()
    said = capsys.readouterr().out
    assert "skipping checkpoint" in said and "model.safetensors does not match its checksum" in said
    assert "resuming stage 0 (direct) at step 4" in said
    assert (out / "stages" / "0-direct").is_dir()


def test_fingerprints_cover_precision_autocast_the_training_images_and_student_init(tmp_path):
    """What changes weights without changing a recipe line: the launcher's precision, the teacher's autocast, an
    image replaced at the same path, other weights at student.init's path."""
    import os

    from PIL import Image

    from conftest import TINY_STUDENT
    from pipeline.run_folder import check_fingerprint, stage_fingerprints
    from students.bidiffsr import BiDiffSRUNet
    from teachers import DDPMProcess

    BiDiffSRUNet(**TINY_STUDENT).save_pretrained(tmp_path / "init")
    recipe = write_recipe(tmp_path, student={"init": tmp_path / "init", "unet": {"dropout": 0.0}})
    photo = next((tmp_path / "train").iterdir())

    def fingerprint(*overrides, precision="no"):
        return stage_fingerprints(load_recipe(recipe, list(overrides)), DDPMProcess(), TINY_STUDENT, precision)[0]

    base = fingerprint()
    assert "precision" not in base and "autocast" not in base["models"]["teacher"]  # defaults: as before
    changes = {"precision": fingerprint(precision="bf16"), "autocast": fingerprint('teacher.autocast="bf16"')}
    Image.new("RGB", (64, 64), "white").save(photo)  # the same path, other pixels
    os.utime(photo, ns=(1, 1))
    changes["image"] = fingerprint()
    BiDiffSRUNet(**dict(TINY_STUDENT, dropout=0.5)).save_pretrained(tmp_path / "init")
    changes["student.init"] = fingerprint()
    for what, changed in changes.items():
        with pytest.raises(RunFolderError, match="different recipe"):
            check_fingerprint(base, changed, f"a stage ({what})", "stages[0]")
    # a fingerprint written before the file digests existed is compared without them
    older = {**base, "data": {k: v for k, v in base["data"].items() if k != "content"},
             "models": {k: v for k, v in base["models"].items() if k != "student_init_sha256"}}
    check_fingerprint(older, changes["image"], "an older stage", "stages[0]")


def test_a_full_disk_mid_run_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    """ENOSPC while a checkpoint is written (simulated: the checksum write fails once): one line saying what is intact,
    the half-written checkpoint is not used, and the same command resumes and finishes."""
    import errno

    from pipeline import checkpoints as trainer_module

    recipe = direct_recipe(tmp_path, "full", steps=6, every=2)
    real, calls = trainer_module.write_checksums, []

    def disk_full_on_the_second_checkpoint(folder):
        calls.append(folder)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        return real(folder)

    monkeypatch.setattr(trainer_module, "write_checksums", disk_full_on_the_second_checkpoint)
    assert run_main([str(recipe)]) == 1
    said = capsys.readouterr().err
    assert "No space left on device" in said and "run the same command again to resume" in said
    assert "Traceback" not in said
    monkeypatch.setattr(trainer_module, "write_checksums", real)
    assert run_main([str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "resuming stage 0 (direct) at step 2" in out and (tmp_path / "full" / "publish").is_dir()
