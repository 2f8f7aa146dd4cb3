"""Command line super-resolution with a published student.

    python -m pipeline.upscale IN [IN ...] OUT --model runs/quickstart/publish [--steps N] [--seed 10] [--tile 256]
        [--dtype bfloat16 (on a GPU)] [--threads 2] [--packed (CPU: real 1-bit arithmetic)]

IN is an image or a folder of images (several may be given, e.g. a shell glob), OUT a file for one image, else a
folder; `--model` a published folder or a Hub id.
It never overwrites an input, refuses two inputs that would write one output (`pic.jpg` and `pic.png`), keeps
existing outputs unless `--overwrite`, and writes each image under a temporary name before renaming it. Progress
counts the network evaluations of each image (tiles x steps) on stderr: a bar in a terminal, a line with rate and
ETA every 10 s (and at the end) in logs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from PIL import Image

from pipeline.allocator import keep_freed_memory
from pipeline.image_files import UNREADABLE, image_files

DTYPES = ("bfloat16", "float16", "float32")  # torch dtypes by name: torch is imported only once the usage is right


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.upscale", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="the inputs (LR images and/or folders of them, e.g. a "
                        "shell glob), then the output: an image for one input image, else a folder")
    parser.add_argument("--model", required=True, help="published folder or Hub id (owner/name)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: the model's process: DDPM 50, ResShift all its steps; "
                             "one-step students take one)")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--tile", type=int, default=256, help="HR tile size for large images (tiles go through "
                        "the network 8 at a time)")
    parser.add_argument("--overlap", type=int, default=32, help="HR tile overlap")
    parser.add_argument("--device", default=None, help="cuda when there is a GPU, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="the network's dtype: bfloat16 / float16 halve its memory on a GPU (on this project's "
                             "2-core CPU they ran 50x slower than float32); the sampler stays float32")
    parser.add_argument("--packed", action="store_true",
                        help="run the binarized convs on packed sign bits (XNOR/popcount, CPU only; "
                             "students/packed_conv.py): the same images, real 1-bit arithmetic")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    keep_freed_memory()
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")

    if len(args.paths) < 2:
        parser.error("give the input(s) and then the output")
    *sources, dst = map(Path, args.paths)
    inputs = []
    for src in sources:
        if src.is_dir():
            found = image_files(src)
            if not found:
                parser.error(f"{src} holds no images")
            inputs += found
        elif src.is_file():
            inputs.append(src)
        else:
            parser.error(f"input {src} does not exist")
    one_image = len(sources) == 1 and sources[0].is_file()
    if one_image and not dst.is_dir():
        outputs = [dst]
    elif not one_image and dst.exists() and not dst.is_dir():
        parser.error(f"output {dst} is a file; several inputs go to a folder")
    else:
        outputs = [dst / f"{p.stem}.png" for p in inputs]
    if args.packed and (args.device not in (None, "cpu") or args.dtype != "float32"):
        parser.error("--packed runs on the CPU in float32: use --device cpu --dtype float32")
    problem = check_outputs(inputs, outputs, args.overwrite) or check_readable(inputs)
    if problem:
        parser.error(problem)

    import torch  # slow to import: only after every usage check passed

    from rich.console import Console

    from pipeline.progress import Progress
    from pipeline.sr_pipeline import BiDiffSRPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.packed else "cpu")

    try:
        pipe = BiDiffSRPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype),
                                                packed_kernels=args.packed).to(args.device)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: cannot load --model {args.model}: {err}", file=sys.stderr)
        return 1
    if args.steps is not None and not pipe.process.config.get("one_step", False):
        try:
            pipe.process.inference_timesteps(args.steps)
        except ValueError as err:
            print(f"error: --steps {args.steps}: {err}", file=sys.stderr)
            return 2
    for n, (path, out) in enumerate(zip(inputs, outputs), 1):
        try:
            image = Image.open(path)
            image.load()  # reads and closes the file
        except UNREADABLE as err:
            print(f"error: cannot read {path}: {err}", file=sys.stderr)
            return 1
        # network evaluations over tiles and steps: a bar in a terminal, a line every 10 s in logs
        with Progress(f"{n}/{len(inputs)} {path.name}", total=0, unit="eval", enabled=not args.quiet,
                      console=Console(stderr=True)) as progress:
            sr = pipe(image, num_inference_steps=args.steps, seed=args.seed, tile_size=args.tile,
                      tile_overlap=args.overlap,
                      progress=lambda done, total: progress.update(done, total=total)).images[0]
        tmp = out.with_name(f".{out.stem}.{os.getpid()}.partial{out.suffix}")  # the suffix picks the format
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            sr.save(tmp)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            print(f"error: cannot write {out}: {err.strerror or err}", file=sys.stderr)
            return 1
        try:
            if args.overwrite:
                tmp.replace(out)
            else:
                os.link(tmp, out)  # created only if absent: two runs never replace each other's result
        except FileExistsError:
            print(f"error: {out} appeared while this image was upscaled (another run writing it?); it was left as "
                  "it is (pass --overwrite to replace it)", file=sys.stderr)
            return 1
        finally:
            tmp.unlink(missing_ok=True)
        print(f"{path} -> {out} ({sr.width}x{sr.height})")
    return 0


def check_outputs(inputs: list[Path], outputs: list[Path], overwrite: bool) -> str:
    """Why these outputs must not be written ('' when they may): an output that is an input, two inputs with one
    output, or an existing output without `overwrite`."""
    sources = {p.resolve() for p in inputs}
    seen: dict[Path, Path] = {}
    writable = Image.registered_extensions()
    for src, out in zip(inputs, outputs):
        if out.suffix.lower() not in writable:
            return f"output {out}: {out.suffix or 'no extension'} is not an image format (use .png, .jpg, .webp, ...)"
        if out.is_symlink() and not out.exists():
            return f"output {out} is a link to nothing ({os.readlink(out)}); remove it or choose another output"
        target = out.resolve()
        if target in sources:
            return f"output {out} would overwrite the input {target}; choose another output path or folder"
        if target in seen:
            return f"inputs {seen[target]} and {src} would both be written to {out}; rename one of them"
        seen[target] = src
        if target.exists() and not overwrite:
            return f"output {out} exists; pass --overwrite to replace it"
    return ""


def check_readable(inputs: list[Path]) -> str:
    """Why the inputs cannot be upscaled ('' when every one opens as an image): checked before the model loads."""
    for path in inputs:
        try:
            Image.open(path).close()
        except UNREADABLE as err:
            return f"cannot read {path}: {err}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
