"""Evaluation: bicubic, condition, teacher and student rows of PSNR / SSIM (Y, border = scale) and LPIPS on a
benchmark folder, printed as a rich table, written as JSON and as a sample grid (LR | bicubic | teacher | student | HR).
The bicubic row is MATLAB bicubic upscaling, as in the published tables; the condition row is the OpenCV-style
upsampling the models are given (a model that copies its input scores it), so a claim to beat bicubic is made
against the better of the two.

Runs at the end of a recipe, or alone on any saved student or training checkpoint:

    python -m pipeline.evaluate --student runs/x/student --val ../shared/data/Set5 --scale 4 \\
        [--val-lr ../shared/data/Set5_LR_bicubic/X4] [--teacher runs/x/teacher] [--steps 50] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table
from torch import Tensor

from pipeline.allocator import keep_freed_memory
from pipeline.data import DataError, ValImage, float_to_pil, load_lr_images, load_validation
from pipeline.loading import load_student
from pipeline.metrics import LPIPSUnavailable, load_lpips, lpips_distance, psnr_y, ssim_y
from pipeline.progress import Progress
from pipeline.resize import imresize_up, upsample_cond
from pipeline.sr_pipeline import resolve_tiling, tiled_super_resolve
from students.bidiffsr import BiDiffSRUNet
from teachers import Teacher, load_teacher
from teachers.process import DiffusionProcess


AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _tile(img: Tensor, size: int) -> Tensor:
    """Centre square crop resized to size x size (nearest for tiny LR, so pixels stay visible)."""
    h, w = img.shape[-2:]
    s = min(h, w)
    img = img[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    mode = "nearest" if s < size else "bilinear"
    kwargs = {} if mode == "nearest" else {"antialias": True, "align_corners": False}
    return F.interpolate(img[None], size=(size, size), mode=mode, **kwargs)[0].clamp(0, 1)


def save_grid(rows: list[list[Tensor]], labels: list[str], path: Path, tile: int = 192) -> None:
    """A labelled PNG grid: one row per image, one column per label."""
    pad, header = 4, 20
    width = len(labels) * (tile + pad) + pad
    height = header + len(rows) * (tile + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels):
        draw.text((pad + j * (tile + pad) + 4, 4), label, fill="black")
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            arr = (_tile(img, tile) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            canvas.paste(Image.fromarray(arr), (pad + j * (tile + pad), header + pad + i * (tile + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def evaluate(images: list[ValImage], scale: int, student: BiDiffSRUNet | None = None, teacher: Teacher | None = None,
             student_process: DiffusionProcess | None = None, num_inference_steps: int | None = None, seed: int = 10,
             lpips_model=None, out_dir: str | Path | None = None, grid_images: int = 4,
             device: str | torch.device = "cpu", console: Console | None = None, tile_size: int | None = None,
             tile_overlap: int | None = None, lpips_skipped: str = "", record: dict | None = None) -> dict:
    """Score bicubic, the condition, the teacher and the student on `images` and print the table.

    Models get the unclamped bicubic condition and the LR itself, and sample in overlapping tiles as the published
    pipeline does (an image that fits in one tile is sampled whole, with the same result as without tiling).

    Args:
        images: HR/LR pairs (`load_validation`), or LR images alone (no reference metrics).
        student, teacher: the models to score (either may be None); `student_process` is the student's process.
        num_inference_steps: sampling steps; None: each process's default.
        seed: seeds every model's sampling noise.
        lpips_model: an LPIPS network, or None (LPIPS not computed; `lpips_skipped` says why, in the table and file).
        out_dir: where metrics.json and samples.png (`grid_images` rows) go; None writes nothing.
        tile_size, tile_overlap: HR pixels; None: the process's official chopping if it has one, else 512.
        record: further entries for the result and metrics.json.

    Returns:
        {"mean": {method: {metric: value}}, "per_image": ..., ...}, as written to metrics.json.
    """
    methods = (["bicubic", "condition"] + (["teacher"] if teacher is not None else [])
               + (["student"] if student is not None else []))
    if student is not None and student_process is None:
        raise ValueError("evaluating a student needs its diffusion process (student_process)")
    if student is not None:
        student = student.to(device).eval()
    if teacher is not None:
        teacher = teacher.to(device)
    generators = {m: torch.Generator(device).manual_seed(seed) for m in methods}  # seed reset per method and set
    grid_methods = [m for m in methods if m != "condition"]  # it looks like the bicubic column
    seconds = {m: 0.0 for m in methods if m in ("teacher", "student")}
    per_image: list[dict] = []
    grid_rows: list[list[Tensor]] = []
    references = all(image.hr is not None for image in images)
    if not references and any(image.hr is not None for image in images):
        raise ValueError("evaluate either images with HR references or LR images without: not a mix")
    console = console or Console()
    # a bar in a terminal; in logs a line per image with rate and ETA
    with Progress("evaluated", total=len(images), unit="image", console=console, every=0) as progress:
        for image in images:
            hr = image.hr[None].to(device) if references else None
            lr = image.lr[None].to(device)
            cond = upsample_cond(lr, scale)
            outputs = {"bicubic": imresize_up(lr, scale).float().clamp(0, 1), "condition": cond.clamp(0, 1)}
            if teacher is not None:
                with _timed(seconds, "teacher", device), teacher.autocast():
                    outputs["teacher"] = tiled_super_resolve(
                        teacher.unet, teacher.process, cond, num_inference_steps, generator=generators["teacher"],
                        **_tiling(teacher.process, scale, tile_size, tile_overlap), lr=lr)
            if student is not None:
                with _timed(seconds, "student", device):
                    outputs["student"] = tiled_super_resolve(
                        student, student_process, cond, num_inference_steps, generator=generators["student"],
                        **_tiling(student_process, scale, tile_size, tile_overlap), lr=lr)
            scores = {"image": image.name}
            for m in methods:
                scores[m] = {}
                if hr is not None:
                    scores[m] = {"psnr": float(psnr_y(outputs[m], hr, scale)),
                                 "ssim": float(ssim_y(outputs[m], hr, scale))}
                if hr is not None and lpips_model is not None:
                    scores[m]["lpips"] = float(lpips_distance(lpips_model, outputs[m], hr, scale))
            per_image.append(scores)
            if hr is None and out_dir is not None:  # real LR inputs: the super-resolved images are the result
                for m in ("teacher", "student"):
                    if m in outputs:
                        path = Path(out_dir) / m / f"{image.name}.png"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        float_to_pil(outputs[m][0]).save(path)
            if len(grid_rows) < grid_images:
                grid_rows.append([lr[0].cpu()] + [outputs[m][0].cpu() for m in grid_methods]
                                 + ([hr[0].cpu()] if hr is not None else []))
            progress.advance(note=image.name)
    metrics = (["psnr", "ssim"] + (["lpips"] if lpips_model is not None else [])) if references else []
    mean = {m: {k: sum(s[m][k] for s in per_image) / len(per_image) for k in metrics} for m in methods}
    result = {"scale": scale, "num_images": len(images), "num_inference_steps": num_inference_steps, "seed": seed,
              "metrics": metrics, "mean": mean, "per_image": per_image,
              "seconds_per_image": {m: s / len(images) for m, s in seconds.items()}}
    if lpips_skipped:
        result["lpips_skipped"] = lpips_skipped
    result.update(record or {})

    table = Table(title=f"x{scale} on {len(images)} images " + (f"(PSNR/SSIM on Y, border {scale})" if references
                                                                 else "(LR without HR: no reference metrics)"),
                  caption=f"LPIPS SKIPPED: {lpips_skipped}" if lpips_skipped else None, caption_style="bold yellow")
    table.add_column("method")
    for k in metrics:
        table.add_column(k.upper(), justify="right")
    if lpips_skipped:
        table.add_column("LPIPS", justify="right")
    table.add_column("s / image", justify="right")
    for m in methods:
        table.add_row(m, *(f"{mean[m][k]:.2f}" if k == "psnr" else f"{mean[m][k]:.4f}" for k in metrics),
                      *(["skipped"] if lpips_skipped else []),
                      f"{result['seconds_per_image'][m]:.2f}" if m in seconds else "-")
    console.print(table)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(_finite(result), indent=2))
        if grid_rows:
            save_grid(grid_rows, ["LR"] + grid_methods + (["HR"] if references else []), out_dir / "samples.png")
    return result


def _out_problem(out: Path) -> str:
    """Why evaluation must not write into `out` ('' when it may): a file, a folder it cannot write, or one holding a
    samples.png / metrics.json that an earlier evaluation did not write (a user's files are never replaced)."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"--out {out}: cannot create it ({err.strerror})"
    if not os.access(out, os.W_OK):
        return f"--out {out} is not writable"
    try:
        ours = "per_image" in json.loads((out / "metrics.json").read_text())
    except FileNotFoundError:
        ours = not (out / "samples.png").exists()
    except (OSError, ValueError, TypeError):
        ours = False
    return "" if ours else f"--out {out} holds a metrics.json or samples.png that no evaluation wrote; choose another"


def _tiling(process: DiffusionProcess, scale: int, tile: int | None, overlap: int | None) -> dict:
    tile, overlap = resolve_tiling(process, scale, tile, overlap, 512)
    return {"tile": tile, "overlap": overlap}


@contextlib.contextmanager
def _timed(totals: dict, key: str, device):
    """Add the wall time of the block to totals[key] (synchronising a GPU so queued work is counted)."""
    start = time.perf_counter()
    yield
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    totals[key] += time.perf_counter() - start


def _finite(obj):
    """JSON has no infinity: identical images (PSNR = inf) are written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--student", help="published or imported folder, saved student folder or training checkpoint")
    parser.add_argument("--teacher", help="teacher folder (adds the teacher row)")
    parser.add_argument("--val", required=True, help="folder of HR benchmark images (with --lr-only: of LR images)")
    parser.add_argument("--lr-only", action="store_true", help="--val holds real LR images without HR: write the "
                        "super-resolved images and the grid, no reference metrics")
    parser.add_argument("--val-lr", default="", help="folder of pre-made LR images <stem>x<scale>.png")
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the process's)")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--max-images", type=int, default=0)
    parser.add_argument("--crop", type=int, default=0, help="centre-crop HR images to N x N")
    parser.add_argument("--tile", type=int, default=None, help="HR tile size of the models' sampling (default: the "
                        "process's official chopping if it has one, e.g. latent ResShift 512 LR pixels, else 512)")
    parser.add_argument("--lpips-backbone", default="", help="torchvision alexnet.features state dict")
    parser.add_argument("--no-lpips", action="store_true")
    parser.add_argument("--out", default="", help="write metrics.json and samples.png here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher-autocast", choices=sorted(AUTOCAST), default="no",
                        help="run the teacher's network under autocast (the official ResShift / SinSR command lines "
                             "sample in fp16 on a GPU); recorded in metrics.json")
    args = parser.parse_args(argv)
    keep_freed_memory()
    for flag, value, least in (("--max-images", args.max_images, 0), ("--crop", args.crop, 0),
                               ("--scale", args.scale, 1)):
        if value < least:
            parser.error(f"{flag} must be >= {least}, got {value}")

    problem = _out_problem(Path(args.out)) if args.out else ""
    if problem:
        parser.error(problem)
    console = Console(soft_wrap=not sys.stdout.isatty())  # logs: one line per line, however long
    try:
        student, process = load_student(args.student) if args.student else (None, None)
        published = Path(args.student or "") / "model_index.json"
        if args.student and published.is_file():
            scale = json.loads(published.read_text()).get("scale")
            if scale is not None and int(scale) != args.scale:
                raise ValueError(f"{args.student} is an x{scale} student but --scale is {args.scale}")
        teacher = load_teacher(args.teacher) if args.teacher else None
        if teacher is not None:
            teacher.check_scale(args.scale, source="--scale")
            teacher.autocast_dtype = AUTOCAST[args.teacher_autocast]
    except (OSError, ValueError) as err:
        parser.error(str(err))
    lpips_model, skipped = None, ""
    if not args.no_lpips:
        try:
            lpips_model = load_lpips(args.lpips_backbone or None, args.device)
        except LPIPSUnavailable as err:
            if args.lpips_backbone:  # the file asked for is missing or wrong: a mistake to name
                parser.error(str(err))
            skipped = str(err)  # no backbone to be had (offline): the other metrics, as a training run does
            console.print(f"[yellow]LPIPS skipped: {skipped}[/yellow]")
    try:
        images = (load_lr_images(args.val, args.max_images) if args.lr_only
                  else load_validation(args.val, args.scale, args.val_lr, args.max_images, args.crop))
    except DataError as err:
        parser.error(str(err))
    evaluate(images, args.scale, student, teacher, student_process=process, num_inference_steps=args.steps,
             seed=args.seed, lpips_model=lpips_model, out_dir=args.out or None, device=args.device, console=console,
             tile_size=args.tile, lpips_skipped=skipped,
             record={"teacher_autocast": args.teacher_autocast} if teacher is not None else None)


if __name__ == "__main__":
    main()
