"""Publishing: a diffusers-format folder for the trained student, and its upload to a model hub.

The folder (written to a temporary name, then renamed) holds:
    model_index.json, unet/, scheduler/   `BiDiffSRPipeline.from_pretrained(folder or "owner/name")` loads it
    student_1bit.safetensors              the packed 1-bit checkpoint (`students.packing.unpack_student`)
    README.md                             model card: evaluation table, complexity, usage, the recipe
    recipe.json                           the resolved recipe that produced it
    checksums.json                        sha256 of every file, verified by `BiDiffSRPipeline.from_pretrained`
A push (`publish.push_to_hub = "owner/name"`) uploads that folder with huggingface_hub; without credentials or
network it fails with a `PublishError` that says why and leaves the folder as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData, get_token

from pipeline.checksums import write_checksums
from pipeline.sr_pipeline import BiDiffSRPipeline
from students.bidiffsr import BIDiffSRUNet
from students.complexity import format_ops, format_params, measure_student
from students.packing import save_packed

PACKED_NAME = "student_1bit.safetensors"


class PublishError(RuntimeError):
    pass


def model_card(student: BIDiffSRUNet, process, scale: int, metrics: dict | None, recipe: dict | None,
               repo_id: str = "") -> ModelCard:
    c = measure_student(dict(student.config))
    data = ModelCardData(library_name="diffusers", license="apache-2.0", pipeline_tag="image-to-image",
                         tags=["super-resolution", "binarized", "1-bit", "diffusion", "bidistill"])
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {repo_id or 'BiDistill student'}: 1-bit diffusion super-resolution, x{scale}", "",
        f"A binarized BI-DiffSR student (binarizer `{student.config.binarizer}`) trained with BiDistill, on the "
        f"`{type(process).__name__}` process: {_sampling(process)}.", "",
        "| Params (paper rule) | OPs per step at 3x256x256 | raw parameters | binary weights |",
        "| --- | --- | --- | --- |",
        f"| {format_params(c.params)} | {format_ops(c.ops)} | {c.raw_params:,} | {c.binary_params:,} |", "",
    ]
    if metrics:
        names = metrics["metrics"]
        steps = metrics["num_inference_steps"] or "default"
        lines += [f"## Evaluation (x{metrics['scale']}, {metrics['num_images']} images, "
                  f"{steps} steps, seed {metrics['seed']}; PSNR/SSIM on Y)", "",
                  "| method | " + " | ".join(n.upper() for n in names) + " |",
                  "| --- |" + " --- |" * len(names)]
        for method, row in metrics["mean"].items():
            cells = [("-" if row[n] is None else f"{row[n]:.2f}" if n == "psnr" else f"{row[n]:.4f}") for n in names]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Usage", "", "```python",
        "from PIL import Image",
        "from pipeline.sr_pipeline import BiDiffSRPipeline  # pip install the BiDistill repository",
        "", f"pipe = BiDiffSRPipeline.from_pretrained({(repo_id or 'path/to/this/folder')!r})",
        "sr = pipe(Image.open('lr.png'), seed=10).images[0]", "```", "",
        f"`{PACKED_NAME}` holds the same student with 1-bit packed weights: "
        "`students.packing.unpack_student(path)` rebuilds it with bit-identical outputs.", "",
    ]
    if recipe:
        lines += ["## Recipe", "", "```json", json.dumps(recipe, indent=2), "```", ""]
    return ModelCard("\n".join(lines))


def _sampling(process) -> str:
    if getattr(process.config, "one_step", False):
        return "one-step (a single network evaluation from the start state)"
    kind = "deterministic" if process.default_deterministic else "stochastic"
    return f"{process.default_inference_steps} {kind} sampling steps by default"


def write_model_folder(student: BIDiffSRUNet, scheduler, scale: int, folder: str | Path,
                       metrics: dict | None = None, recipe: dict | None = None, repo_id: str = "") -> Path:
    """Write the publishable folder atomically and return its path."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    student = student.eval()
    BiDiffSRPipeline(unet=student, scheduler=scheduler, scale=scale).save_pretrained(tmp)
    save_packed(student, tmp / PACKED_NAME)
    model_card(student, scheduler, scale, metrics, recipe, repo_id).save(tmp / "README.md")
    if recipe is not None:
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
    write_checksums(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a published folder to `repo_id`; returns the commit URL. Never modifies the folder."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise PublishError(f"{folder} is not a published model folder (no model_index.json)")
    token = token or get_token()
    if not token:
        raise PublishError(f"cannot push to {repo_id}: no Hugging Face credentials (run `hf auth login` or set "
                           f"HF_TOKEN); the model is intact in {folder}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message="Upload BiDistill student")
    except Exception as err:  # network down, offline mode, refused token, server error: all end the same way
        raise PublishError(f"push to {repo_id} failed ({type(err).__name__}: {err}); the model is intact in "
                           f"{folder}") from None
    return str(getattr(info, "commit_url", info))
