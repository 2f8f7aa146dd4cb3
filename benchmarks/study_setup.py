"""The distillation study's fixed parts: its training folder (the bundled photos plus Set14), its held-out
evaluation images (Set5 and the two bundled photos kept out of training, all full size), and its teacher recipe.

Set14 trains, so it cannot also judge: the study evaluates only images no model saw.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.quickstart_recipe import ROOT, quickstart_recipe
from pipeline.atomic import folder_written_whole
from pipeline.builtin_data import export_skimage
from pipeline.data import load_validation
from pipeline.recipe import Recipe

SHARED = ROOT.parent / "shared"
TEACHER_STEPS = 12000
CHECKPOINT_EVERY = 3000  # the teacher's checkpoints are the points of its PSNR-against-steps curve


def teacher_stage(steps: int = TEACHER_STEPS) -> str:
    """The teacher's one stage: the twin trained with the process loss, lr 1e-3 cosine, EMA 0.999."""
    return (f'[[stages]]\ntype = "teacher"\nsteps = {steps}\nbatch_size = 8\nlr = 1e-3\nlr_schedule = "cosine"\n'
            f'warmup_steps = {min(100, steps)}\nema_decay = 0.999\n')


def training_folder(out: Path, set14: Path = SHARED / "data" / "Set14") -> tuple[Path, Path]:
    """out/data/train: the 12 bundled training photos and Set14 (copied once); out/data/skimage/val: the two
    bundled photos held out. Returns (train folder, held-out photo folder)."""
    train, held_out = export_skimage(out / "data" / "skimage")
    folder = out / "data" / "train"
    if not folder.is_dir():
        with folder_written_whole(folder) as tmp:
            tmp.mkdir(parents=True)
            for source in sorted(train.glob("*.png")) + sorted(Path(set14).glob("*.png")):
                shutil.copyfile(source, tmp / source.name)
    return folder, held_out


def study_recipe(run: Path, stages: str, train: Path, overrides: list[str] = (), teacher_path: str = "",
                 init_from_teacher: bool = True) -> Recipe:
    """The quickstart's models and process on the study's training folder, with `stages` (TOML)."""
    data = ['data.builtin=""', f'data.train="{train.resolve()}"', 'data.val=""', "data.val_crop=0",
            f"run.checkpoint_every={CHECKPOINT_EVERY}", "run.keep_checkpoints=4", "run.log_every=100"]
    return quickstart_recipe(run, stages, [*data, *overrides], init_from_teacher=init_from_teacher,
                             teacher_path=teacher_path)


def held_out_images(held_out_photos: Path, crop: int = 0):
    """Set5 with its own LR files, then the two held-out bundled photos (LR made by MATLAB bicubic); `crop` > 0:
    only the first Set5 image and the first photo, centre-cropped (smoke runs)."""
    if crop:
        return (load_validation(str(SHARED / "data" / "Set5"), 4, max_images=1, crop=crop)
                + load_validation(str(held_out_photos), 4, max_images=1, crop=crop))
    images = load_validation(str(SHARED / "data" / "Set5"), 4, str(SHARED / "data" / "Set5_LR_bicubic" / "X4"))
    return images + load_validation(str(held_out_photos), 4)
