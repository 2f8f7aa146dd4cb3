"""Publishing: a diffusers-format folder for the trained student, and its upload to a model hub.

The folder (written to a temporary name, then renamed) holds:
    model_index.json, unet/, scheduler/   `BiDiffSRPipeline.from_pretrained(folder or "owner/name")` loads it
    pipeline_bidiffsr.py, unet/bidiffsr_unet.py, scheduler/bidiffsr_process.py
                                          loader files for diffusers' generic `DiffusionPipeline.from_pretrained(
                                          ..., trust_remote_code=True)`: they import this package's classes
    student_1bit.safetensors              the packed 1-bit checkpoint (`students.packing.unpack_student`)
    README.md                             model card: evaluation table, complexity, usage, the recipe
    recipe.json                           the resolved recipe that produced it
    checksums.json                        sha256 of every file, verified by `BiDiffSRPipeline.from_pretrained`
A push (`publish.push_to_hub = "owner/name"`) uploads that folder with huggingface_hub; without credentials or
network it fails with a `PublishError` that says why and leaves the folder as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token

from pipeline.atomic import folder_written_whole
from pipeline.sr_pipeline import BiDiffSRPipeline
from students.bidiffsr import BiDiffSRUNet
from students.binarizers import get_binarizer
from students.checksums import CHECKSUMS, UNCHECKED, write_checksums
from students.complexity import format_ops, format_params, measure_student
from students.finite import name_tensors, nonfinite_tensors
from students.packing import save_packed

PACKED_NAME = "student_1bit.safetensors"

PAPERS = [
    ("Binarized Diffusion Model for Image Super-Resolution (BI-DiffSR)", "zhengchen1999/BI-DiffSR"),
    ("BiDM: Pushing the Limit of Quantization for Diffusion Models", "Xingyu-Zheng/BiDM"),
    ("BiMaCoSR: Binary One-Step Diffusion Model Leveraging Flexible Matrix Compression for Real Super-Resolution",
     "Kai-Liu001/BiMaCoSR"),
    ("ResShift: Efficient Diffusion Model for Image Super-resolution by Residual Shifting", "zsyOAOA/ResShift"),
    ("SinSR: Diffusion-Based Image Super-Resolution in a Single Step", "wyf0912/SinSR"),
]


class PublishError(RuntimeError):
    pass


def _card_data(metrics: dict | None, recipe: dict | None, repo_id: str, license: str) -> ModelCardData:
    datasets = [recipe["data"]["train_hub"]] if recipe and recipe.get("data", {}).get("train_hub") else None
    results = None
    if metrics and "student" in metrics["mean"]:
        name = Path(recipe["data"]["val"]).name if recipe and recipe.get("data", {}).get("val") else "validation"
        results = [EvalResult(task_type="image-to-image", dataset_type=name, dataset_name=f"{name} x{metrics['scale']}",
                              metric_type=metric, metric_value=round(float(value), 4))
                   for metric, value in metrics["mean"]["student"].items() if value is not None]
    spdx, _, name = (license or "apache-2.0").partition(":")  # "other:<name>" for a licence without a Hub id
    return ModelCardData(library_name="diffusers", license=spdx, license_name=name or None,
                         pipeline_tag="image-to-image", tags=["super-resolution", "binarized", "1-bit", "diffusion",
                                                              "bidistill"], datasets=datasets,
                         metrics=(metrics or {}).get("metrics") or None, model_name=repo_id or "BiDistill student",
                         eval_results=results)


def _provenance(recipe: dict | None) -> list[str]:
    """Teacher and data lines of the model card, from the recipe."""
    if not recipe:
        return []
    teacher, data = recipe.get("teacher", {}), recipe.get("data", {})
    trained = [s["type"] for s in recipe.get("stages", [])]
    source = (f"loaded from a folder named `{Path(teacher['path']).name}`" if teacher.get("path")
              else f"trained in the same run (kind `{teacher.get('kind', 'twin')}`)")
    train = data.get("train_hub") or data.get("builtin") or Path(data.get("train") or "?").name  # no local paths
    lr = {"realesrgan": "made by Real-ESRGAN's second-order degradation (blur, resize, noise, JPEG, twice), the "
                        "model is meant for real-world LR images"}.get(data.get("degradation", "bicubic"),
                                                                         "bicubic downscaling (MATLAB imresize)")
    return [f"- Teacher: {source}; stages: {', '.join(trained)}.",
            f"- Training data: `{train}`; validation: `{Path(data.get('val') or '-').name}`; LR images: {lr}.", ""]


def _licence_note(license: str) -> list[str]:
    if not license:
        return []
    name = license.partition(":")[2] or license
    return [f"- Licence: the teacher's released weights are under {name}; this student is derived from them (and "
            "ships their autoencoder if its process has one), so it carries that licence.", ""]


def model_card(student: BiDiffSRUNet, process, scale: int, metrics: dict | None, recipe: dict | None,
               repo_id: str = "", license: str = "") -> ModelCard:
    """The README.md of a published folder.

    Args:
        student, process, scale: the published model.
        metrics, recipe, repo_id: as `write_model_folder` takes them (the evaluation table, the recipe, the Hub name).
        license: the teacher's released weights' licence (a Hub id, or "other:<name>"), which a student distilled
            from them and shipping their autoencoder carries; "": apache-2.0.

    Returns:
        The card.
    """
    side = 256 // process.spatial_factor  # the student's input for a 256x256 output
    c = measure_student(dict(student.config), side, side)
    space = f" {process.space_note()}" if process.space_note() else ""
    where = repo_id or "path/to/this/folder"
    lines = [
        "---", _card_data(metrics, recipe, repo_id, license).to_yaml(), "---", "",
        f"# {repo_id or 'BiDistill student'}: 1-bit diffusion super-resolution, x{scale}", "",
        f"A binarized BI-DiffSR student (binarizer `{student.config.binarizer}`) trained with BiDistill, on the "
        f"`{type(process).__name__}` process ({process.num_train_timesteps} training steps): "
        f"{_sampling(process)}.{space}", "",
    ] + _provenance(recipe) + _licence_note(license) + [
        f"| Params (paper rule) | OPs per step at 3x{side}x{side}"
        + (" (a 256x256 output)" if side != 256 else "") + " | raw parameters | binary weights |",
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
        if metrics.get("lpips_skipped"):
            lines += [f"LPIPS was not computed: {metrics['lpips_skipped']}", ""]
        if metrics.get("teacher_autocast", "no") != "no":
            lines += [f"The teacher row was sampled under {metrics['teacher_autocast']} autocast.", ""]
    lines += [
        "## Usage", "", "With the BiDistill package installed (its loader runs no code from the model folder):", "",
        "```python", "from PIL import Image", "from pipeline.sr_pipeline import BiDiffSRPipeline", "",
        f"pipe = BiDiffSRPipeline.from_pretrained({where!r})",
        "sr = pipe(Image.open('lr.png'), seed=10).images[0]", "```", "",
        "or diffusers' generic call, through the loader files in this folder (they import the same classes):", "",
        "```python", "from diffusers import DiffusionPipeline", "",
        f"pipe = DiffusionPipeline.from_pretrained({where!r}, trust_remote_code=True)", "```", "",
    ] + ([f"`{PACKED_NAME}` holds the same student with its binary weights packed 1 bit each: "
           "`students.packing.unpack_student(path)` rebuilds it with bit-identical outputs.", ""] if _binary(student)
         else ["This network is full precision (binarizer `none`, a binarized student's twin): no 1-bit file.", ""]) + [
        "## Papers", "",
    ] + [f"- {title} (`{repo}`)" for title, repo in PAPERS] + [""]
    if recipe:  # the card holds no local paths; recipe.json is the run's own record
        lines += ["## Recipe", "", "The recipe that made this model is `recipe.json` in this folder.", ""]
    return ModelCard("\n".join(lines))


def files_not_published(folder: Path) -> list[str]:
    """Files in an existing published folder that its checksums.json does not list (a user's additions)."""
    try:
        listed = set(json.loads((folder / CHECKSUMS).read_text()))
    except (OSError, ValueError):
        return []  # no earlier publish, or an unreadable one: nothing to tell apart
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name not in UNCHECKED and str(p.relative_to(folder)) not in listed)


def _binary(student: BiDiffSRUNet) -> bool:
    return get_binarizer(student.config.binarizer).binary


def _sampling(process) -> str:
    if getattr(process.config, "one_step", False):
        return "one-step (a single network evaluation from the start state)"
    kind = "deterministic" if process.default_deterministic else "stochastic"
    return f"{process.default_inference_steps} {kind} sampling steps by default"


def write_model_folder(student: BiDiffSRUNet, process, scale: int, folder: str | Path,
                       metrics: dict | None = None, recipe: dict | None = None, repo_id: str = "",
                       license: str = "") -> Path:
    """Write the publishable folder atomically (replacing an earlier publish; refusing files a user added).

    Args:
        student, process: the trained student and the diffusion process it samples with.
        scale: the SR factor it was trained for.
        folder: where to write it.
        metrics: `evaluate`'s result for the model card's table, or None.
        recipe: the resolved recipe (recipe.json and the card); repo_id: the Hub name the card uses.
        license: the card's licence (see `model_card`).

    Returns:
        The folder's path.
    """
    folder = Path(folder)
    student = student.eval()
    foreign = files_not_published(folder)
    if foreign:
        raise PublishError(f"{folder} holds files an earlier publish did not write ({', '.join(foreign[:3])}"
                           f"{' ...' if len(foreign) > 3 else ''}); publishing replaces the folder whole, so move them "
                           "out first")
    bad = nonfinite_tensors(student)
    if bad:
        raise PublishError(f"not publishing {folder}: the student holds NaN or infinite weights "
                           f"({name_tensors(bad)}); its training diverged")
    with folder_written_whole(folder) as tmp:
        BiDiffSRPipeline(unet=student, scheduler=process, scale=scale).save_pretrained(tmp)  # with its loader files
        if _binary(student):  # a full-precision twin (binarizer "none") has nothing to pack
            save_packed(student, tmp / PACKED_NAME)
        model_card(student, process, scale, metrics, recipe, repo_id, license).save(tmp / "README.md")
        if recipe is not None:
            (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
        write_checksums(tmp)
    return folder


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                revision: str | None = None, commit_message: str = "Upload BiDistill student",
                create_pr: bool = False) -> str:
    """Upload a published folder to the Hub; never modifies the folder.

    Args:
        folder: a folder `write_model_folder` wrote.
        repo_id: "owner/name", created (`private` or not) when missing.
        token: a Hugging Face token; None: the stored login or $HF_TOKEN.
        revision: the branch to push to (created if absent); None: main.
        commit_message, create_pr: the commit's message; open a pull request instead of committing.

    Returns:
        The commit's or pull request's URL.
    """
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
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message, revision=revision, create_pr=create_pr)
    except Exception as err:  # network down, offline mode, refused token, server error: all end the same way
        raise PublishError(f"push to {repo_id} failed ({type(err).__name__}: {err}); the model is intact in "
                           f"{folder}") from None
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", info))
