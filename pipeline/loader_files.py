"""The loader files a published folder carries for diffusers' generic call,
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`: diffusers' custom-code convention names
["<file stem>", "<class>"] in model_index.json and looks for the file in the component's folder (the pipeline's at
the top). Each file only imports the class from the installed BiDistill package. Written by
`BiDiffSRPipeline.save_pretrained`, so every folder it saves (and diffusers' `push_to_hub`, which saves through it)
is complete."""

from __future__ import annotations

import json
from pathlib import Path

from students.bidiffsr import BiDiffSRUNet
from teachers.process import PROCESSES

PIPELINE_CLASS = "BiDiffSRPipeline"  # pipeline.sr_pipeline's, which imports this module

# component -> (loader file, the package module it points at)
LOADERS = {
    "_class_name": ("pipeline_bidiffsr.py", "pipeline.sr_pipeline"),
    "unet": ("unet/bidiffsr_unet.py", "students.bidiffsr"),
    "scheduler": ("scheduler/bidiffsr_process.py", "teachers"),
}

LOADER_TEMPLATE = '''"""Loader for diffusers' generic call on this model:

    DiffusionPipeline.from_pretrained("<this folder or Hub id>", trust_remote_code=True)

It only points at {what} in the BiDistill package, which must be installed (BiDistill's own
`BiDiffSRPipeline.from_pretrained` loads the model without running this file)."""

import importlib

try:
    _module = importlib.import_module("{module}")
except ImportError as err:
    raise ImportError("this model runs on BiDistill's code: install the BiDistill package in this environment "
                      "(pip install <its repository>)") from err

{names}
'''


def write_loaders(folder: Path, process) -> None:
    """The generic-diffusers loader files and the model_index.json entries that name them."""
    folder = Path(folder)
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    classes = {"_class_name": [PIPELINE_CLASS], "unet": [BiDiffSRUNet.__name__],
               "scheduler": sorted(c.__name__ for c in PROCESSES.values())}
    own = {"_class_name": PIPELINE_CLASS, "unet": BiDiffSRUNet.__name__, "scheduler": type(process).__name__}
    for key, (file, module) in LOADERS.items():
        names = "\n".join(f"{name} = _module.{name}" for name in classes[key])
        (folder / file).write_text(LOADER_TEMPLATE.format(what=", ".join(classes[key]), module=module, names=names))
        index[key] = [Path(file).stem, own[key]]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
