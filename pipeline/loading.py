"""Loading a student from any file or folder BiDistill writes, in one place: what evaluation, training, the
published pipeline's users and the packed-file readers call."""

from __future__ import annotations

from pathlib import Path

from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file

from pipeline.sr_pipeline import BiDiffSRPipeline
from students.bidiffsr import BiDiffSRUNet
from students.finite import check_finite
from students.packing import unpack_student
from teachers.process import DiffusionProcess, load_process

def load_student(path: str | Path, packed_kernels: bool = False) -> tuple[BiDiffSRUNet, DiffusionProcess]:
    """(student, its process) from a published folder, a saved student folder (a finished stage), a training
    checkpoint (config.json + model.safetensors) or a published folder's packed 1-bit file; the last three with the
    process's scheduler_config.json beside (the packed file: in the published folder's `scheduler/`).
    `packed_kernels=True` runs the binarized convs on packed sign bits (CPU inference)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        model = unpack_student(path, packed_kernels=packed_kernels)
        return model, load_process(path.parent / "scheduler")
    if (path / "model_index.json").is_file() and (path / "unet").is_dir():  # a published (or imported) folder
        pipe = BiDiffSRPipeline.from_pretrained(path, packed_kernels=packed_kernels)
        return pipe.unet, pipe.process
    if (path / SAFETENSORS_WEIGHTS_NAME).is_file():
        model = BiDiffSRUNet.from_pretrained(path)
    elif (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        model = BiDiffSRUNet.from_config(BiDiffSRUNet.load_config(path))
        model.load_state_dict(load_file(path / "model.safetensors"))
    else:
        raise ValueError(f"{path} is neither a saved student ({SAFETENSORS_WEIGHTS_NAME} + config.json) nor a training "
                         "checkpoint (model.safetensors + config.json) nor a published folder or its packed file")
    check_finite(model, f"the student in {path}")
    if packed_kernels:
        model.eval().use_packed_kernels()
    return model, load_process(path)
