"""Full-precision SR diffusion teachers: one `Teacher` (a denoiser on a diffusion process), the processes (BI-DiffSR's
DDPM, ResShift in pixel space and on VQ latents) and the denoiser kinds a `teacher` stage can build. Imported
teachers (`python -m pipeline.importers`) bring their own denoiser: the original SR3 layout of `SR3UNet`, ResShift's
`teachers.swin_unet.SwinUNet` on `LatentResShiftProcess`.

| kind   | denoiser                                                             | teaches by                        |
| ------ | -------------------------------------------------------------------- | --------------------------------- |
| `sr3`  | SR3's UNet (`teachers.sr3.SR3UNet`)                                  | outputs, one-step targets         |
| `twin` | the student's full-precision twin (`BiDiffSRUNet`, binarizer "none") | features (SPD), outputs, one-step |

Saved teachers record their components by module path (`["teachers.sr3", "SR3UNet"]`, `["teachers.ddpm",
"DDPMProcess"]`, `["students.bidiffsr", "BiDiffSRUNet"]` in model_index.json) and import them from there: keep
those paths.
"""

from students.bidiffsr import BiDiffSRUNet
from teachers.base import Teacher, load_teacher
from teachers.ddpm import DDPMProcess
from teachers.process import (PROCESSES, DiffusionProcess, build_process, load_process, noisy_batch, sample,
                              training_loss)
from teachers.latent_resshift import LatentResShiftProcess
from teachers.resshift import ResShiftProcess
from teachers.sr3 import SR3UNet
from teachers.swin_unet import SwinUNet  # imported teachers' denoisers load only once their module is imported

TEACHER_KINDS = ("sr3", "twin")


def build_teacher_denoiser(kind: str, unet_config: dict, student_config: dict):
    """A fresh denoiser of a teacher kind: `sr3` from `unet_config`; `twin` from the student's config with
    binarization off (its widths are the student's by construction, so `unet_config` must be empty)."""
    if kind == "sr3":
        return SR3UNet(**unet_config)
    if kind == "twin":
        if unet_config:
            raise ValueError("teacher.unet: a twin teacher copies student.unet (set the widths there), so "
                             f"teacher.unet must be empty, got keys {sorted(unet_config)}")
        return BiDiffSRUNet(**BiDiffSRUNet.twin_config(student_config))
    raise ValueError(f"teacher.kind={kind!r} is not one of {TEACHER_KINDS}")


__all__ = ["Teacher", "load_teacher", "DiffusionProcess", "DDPMProcess", "ResShiftProcess", "LatentResShiftProcess",
           "PROCESSES", "build_process", "load_process", "noisy_batch", "sample", "training_loss", "SR3UNet",
           "SwinUNet", "TEACHER_KINDS", "build_teacher_denoiser"]
