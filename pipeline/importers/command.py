"""The import command: officially released checkpoints into BiDistill folders that load with one line.

    python -m pipeline.importers bidiffsr BI_DiffSR_x4.pth [--config test_BI_DiffSR_x4.yml] --out DIR

`bidiffsr`: a released BI-DiffSR generator (BasicSR `net_g_*.pth`, the repository zhengchen1999/BI-DiffSR) becomes a
published student folder: `BiDiffSRPipeline.from_pretrained(DIR)`, `BiDiffSRUNet.from_pretrained(DIR / "unet")`, and
`python -m pipeline.evaluate --student DIR ...` evaluates it. The two networks agree layer for layer; only names and
the layout of the per-timestep-group parameters differ (the official code keeps one module per TaR/TaA group, we
keep one (K, C) table), so the conversion is a renaming plus stacking, checked strictly: every released key is used
once, every parameter of ours is filled, every shape matches, or the error names the file and the first offending
key. EMA weights (`params_ema`) are preferred over `params` when both are present. The process is the official one
(`clip_sample = "official"`, its beta schedule), so an evaluation reproduces how the paper evaluated its weights.

The network settings come from the BasicSR option file given with `--config` (its `network_g` and `beta_schedule`);
without one they are read from the checkpoint's shapes, except `norm_groups` and `image_size`, which shapes do not
determine: the released x2/x4 values (16, 256) are used and the command says so.

    python -m pipeline.importers sr3 I640000_E37_gen.pth --config sr_sr3_16_128.json --out DIR

`sr3`: a released SR3 generator (Janspiry/Image-Super-Resolution-via-Iterative-Refinement; the GaussianDiffusion state
dict, its `denoise_fn.` denoiser and saved schedule buffers) becomes a teacher folder (`load_teacher(DIR)`,
`teacher.path` in a recipe): `SR3UNet` with the original layout (attention at the config's `attn_res`, no SiLU before
the per-block time projection) and the original process (`DDPMProcess` with images in [-1, 1], the noise level
sqrt(alpha_bar_t) as the network's time input, ancestral sampling through every step of the config's linear
schedule). Its JSON config (`--config`, with its // comments) is required: shapes give neither the attention
resolutions nor the schedule.

    python -m pipeline.importers resshift resshift_realsrx4_s15_v1.pth --autoencoder autoencoder_vq_f4.pth \
        [--config realsr_swinunet_realesrgan256.yaml] [--one-step] --out DIR

`resshift`: a released ResShift denoiser (zsyOAOA/ResShift, `UNetModelSwin`) and the VQ-f4 autoencoder it was
trained on become a teacher folder: `teachers.swin_unet.SwinUNet` (the released names, loaded strictly) on
`teachers.latent_resshift.LatentResShiftProcess` (the chain on the autoencoder's latents, no x0 clip), the autoencoder
converted onto diffusers' `VQModel`. The option file (`--config`, the release's YAML) gives the network, schedule and
autoencoder settings; without it the released real-SR x4 ones (15 steps) are assumed and the command says so.
`--one-step` takes a SinSR checkpoint (wyf0912/SinSR, `SinSR_v1.pth`: the same network distilled to one step): the
folder's process is then the one-step variant, one evaluation at the top step from x_T read as x0, as SinSR samples.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import pipeline.importers as importers_package
from pipeline.importers import IMPORTERS, CheckpointError, Importer
from pipeline.progress import Phase

OPTIONS = {"autoencoder": "--autoencoder", "one_step": "--one-step"}  # what an importer may take, as spelled


def importers() -> dict[str, Importer]:
    """Every importer: each module of `pipeline.importers` registers its own when imported."""
    for module in pkgutil.iter_modules(importers_package.__path__):
        if module.name not in ("command", "__main__"):
            importlib.import_module(f"{importers_package.__name__}.{module.name}")
    return IMPORTERS


def main(argv: list[str] | None = None) -> int:
    kinds = importers()
    parser = argparse.ArgumentParser(prog="python -m pipeline.importers", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("kind", choices=sorted(kinds), help="what the checkpoint is: " + "; ".join(
        f"{kind}: {importer.what}" for kind, importer in sorted(kinds.items())))
    parser.add_argument("checkpoint", help="the released weights (.pth, .pt or .safetensors)")
    parser.add_argument("--config", default=None,
                        help="the release's config: BasicSR option YAML (bidiffsr, optional), JSON (sr3, required), "
                             "option YAML (resshift, optional)")
    parser.add_argument("--autoencoder", default=None,
                        help="resshift: the VQ autoencoder file the model was trained on (autoencoder_vq_f4.pth)")
    parser.add_argument("--one-step", action="store_true",
                        help="resshift: the checkpoint is SinSR's one-step model (sample with one evaluation)")
    parser.add_argument("--scale", type=int, default=0,
                        help="SR factor when the config does not give it (sr3; resshift: overrides the config's sf)")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist)")
    args = parser.parse_args(argv)
    importer = kinds[args.kind]
    if Path(args.out).exists():
        parser.error(f"--out {args.out} exists; choose a new folder (nothing is overwritten)")
    foreign = [flag for name, flag in OPTIONS.items() if getattr(args, name) and name not in importer.options]
    if foreign:
        parser.error(f"{' and '.join(foreign)} do not apply to the {args.kind} kind")
    try:
        with Phase(f"importing {args.kind} {args.checkpoint}"):  # a spinner in a terminal, start / done lines in logs
            folder, notes = importer.run(args)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    print(f"imported {args.kind} {args.checkpoint} -> {folder} ({importer.loads.format(folder=str(folder))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
