"""One-line inference: `BiDiffSRPipeline`, a diffusers `DiffusionPipeline` of a BI-DiffSR student and its process.

    from pipeline.sr_pipeline import BiDiffSRPipeline
    pipe = BiDiffSRPipeline.from_pretrained("runs/quickstart/publish")     # or a Hub id "owner/name"
    sr = pipe(Image.open("lr.png"), seed=10).images[0]

The process (`scheduler`, saved with the student) decides how it samples: DDIM on BI-DiffSR's DDPM (50 steps by
default), ResShift's 15-step chain, or one evaluation for a one-step student; sampling is `teachers.process.sample`,
the same loop the teachers use.

Takes LR PIL images or (B, 3, h, w) tensors in [0, 1] of any size and returns x`scale` images. Large inputs are
super-resolved in overlapping tiles (batched through one sampling loop) and blended with linear ramps; the initial
noise is drawn once for the whole image, so overlapping tiles start from the same noise.

This module path is recorded in published model_index.json files: keep it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import snapshot_download
from PIL import Image
from torch import Tensor

from pipeline.data import float_to_pil, to_rgb8
from pipeline.loader_files import write_loaders
from pipeline.resize import upsample_cond
from students.bidiffsr import BiDiffSRUNet
from students.checksums import CHECKSUMS, damage
from students.finite import check_finite
from students.shapes import pad_to_multiple
from teachers.process import DiffusionProcess, load_process, num_evaluations, sample


@torch.no_grad()
def super_resolve(student: torch.nn.Module, process: DiffusionProcess, cond: Tensor,
                  num_inference_steps: int | None = None, generator: torch.Generator | None = None,
                  noise: Tensor | None = None,
                  progress: Callable[[], object] | None = None, lr: Tensor | None = None) -> Tensor:
    """Super-resolve a batch with a student on its process.

    The network runs in its own dtype (bf16/fp16 weights too); the process's arithmetic stays float32. A student with
    BiDM's cross-timestep connection (`cross_timestep_blocks`) mixes in the previous step's block outputs (none at
    the first step).

    Args:
        student, process: the student and the process it samples on.
        cond: bicubic(LR) at HR size, unclamped; `lr`: the LR itself, when the caller has it.
        num_inference_steps: None: the process's default.
        generator, noise: the start noise is `noise` (at the padded size) or drawn with `generator`.
        progress: called after every network evaluation.

    Returns:
        [0, 1] images at the condition's size.
    """
    dtype = next(student.parameters()).dtype
    mixes_previous_step = bool(getattr(student.config, "cross_timestep_blocks", 0))  # a teacher's unet has none
    previous: dict[str, dict[str, Tensor] | None] = {"features": None}

    def denoise(x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        if not mixes_previous_step:
            return student(x.to(dtype), y.to(dtype), t).float()
        out, previous["features"] = student(x.to(dtype), y.to(dtype), t, return_features=True,
                                            cache=previous["features"])
        return out.float()

    return sample(denoise, process, cond, num_inference_steps, size_multiple=student.size_multiple,
                  generator=generator, noise=noise, progress=progress, lr=lr)


def tile_batch_for(device: torch.device) -> int:
    """Tiles per batched network evaluation: 8 on an accelerator; 1 on a CPU, where a bigger batch of 256x256 tiles
    costs more per tile (paper-size student on 2 cores: 2.4 s per tile alone, 3.6 s in a batch of 8; packed kernels
    1.0 vs 2.2 s; `benchmarks/binary_speed.py`), its activations no longer fitting the caches."""
    return 1 if torch.device(device).type == "cpu" else 8


def num_tiles(h: int, w: int, tile: int, overlap: int) -> int:
    return len(_starts(h, tile, overlap)) * len(_starts(w, tile, overlap))


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(length: int, overlap: int, device) -> Tensor:
    """1 in the middle, rising linearly over `overlap` pixels at both ends (never 0, so every pixel has weight)."""
    r = torch.ones(length, device=device)
    if overlap > 0:
        edge = torch.arange(1, overlap + 1, device=device, dtype=torch.float32) / (overlap + 1)
        r[:overlap] = edge
        r[-overlap:] = edge.flip(0)
    return r


@torch.no_grad()
def tiled_super_resolve(student: torch.nn.Module, process: DiffusionProcess, cond: Tensor,
                        num_inference_steps: int | None,
                        generator: torch.Generator | None = None, tile: int = 256, overlap: int = 32,
                        tile_batch: int | None = None, progress: Callable[[], object] | None = None,
                        lr: Tensor | None = None) -> Tensor:
    """`super_resolve` over overlapping windows of one image, blended; an image that fits one tile is sampled whole.

    Args:
        student: any denoiser with a `size_multiple` (a teacher's `unet` too); `process`: the one it samples on.
        cond: one (1, 3, H, W) condition; `lr`: its LR, when given (cut into the matching LR windows).
        num_inference_steps, generator: as `super_resolve`.
        tile, overlap: the window's side and the windows' overlap, in HR pixels.
        tile_batch: windows sampled together; None: `tile_batch_for` the device.
        progress: called after each batched network evaluation (ceil(tiles / tile_batch) x steps calls).

    Returns:
        The (1, 3, H, W) image in [0, 1].
    """
    _, c, h, w = cond.shape
    if h <= tile and w <= tile:
        return super_resolve(student, process, cond, num_inference_steps, generator=generator, progress=progress,
                             lr=lr)
    multiple, f = student.size_multiple * process.spatial_factor, process.spatial_factor
    if tile % multiple or not 0 <= overlap < tile // 2 or overlap % f or h % f or w % f:
        raise ValueError(f"tile_size={tile} must be a multiple of {multiple}, overlap={overlap} in [0, tile_size / 2)"
                         + (f", and overlap and the image size {h}x{w} multiples of the process's latent cell {f}"
                            if f > 1 else ""))
    tile_batch = tile_batch or tile_batch_for(cond.device)
    # one noise for the whole image (in the process's space), so overlapping tiles start from the same noise
    noise = randn_tensor(process.noise_shape(cond.shape), generator=generator, device=cond.device, dtype=cond.dtype)
    boxes = [(y, x) for y in _starts(h, tile, overlap) for x in _starts(w, tile, overlap)]
    th, tw = min(tile, h), min(tile, w)
    s = h // lr.shape[-2] if lr is not None else 1
    if lr is not None and any(v % s for box in boxes for v in box + (th, tw)):
        lr = None  # windows not on LR pixels: the process recovers the LR from the condition where it needs one
    out = torch.zeros(1, c, h, w, device=cond.device)
    weight = torch.zeros(1, 1, h, w, device=cond.device)
    window = _ramp(th, overlap if h > tile else 0, cond.device)[:, None] * _ramp(tw, overlap if w > tile else 0,
                                                                                cond.device)[None, :]
    for i in range(0, len(boxes), tile_batch):
        chunk = boxes[i : i + tile_batch]
        conds = torch.cat([cond[:, :, y : y + th, x : x + tw] for y, x in chunk])
        noises = torch.cat([noise[:, :, y // f : (y + th) // f, x // f : (x + tw) // f] for y, x in chunk])
        lrs = None if lr is None else torch.cat([lr[:, :, y // s : (y + th) // s, x // s : (x + tw) // s]
                                                for y, x in chunk])
        srs = super_resolve(student, process, conds, num_inference_steps, generator=generator,  # stochastic steps
                            noise=pad_to_multiple(noises, student.size_multiple), progress=progress, lr=lrs)
        for (y, x), sr in zip(chunk, srs):
            out[:, :, y : y + th, x : x + tw] += sr * window
            weight[:, :, y : y + th, x : x + tw] += window
    return out / weight


def resolve_tiling(process: DiffusionProcess, scale: int, tile: int | None, overlap: int | None,
                   default_tile: int) -> tuple[int, int]:
    """(tile, overlap) in HR pixels: the caller's where given (overlap 32 by default), else the process's official
    chopping, else (`default_tile`, 32)."""
    default = process.official_tiling(scale) if tile is None else None
    tile, default_overlap = default or (tile or default_tile, 32)
    return tile, default_overlap if overlap is None else overlap


@dataclass
class SRPipelineOutput(BaseOutput):
    images: list[Image.Image] | list[Tensor] | np.ndarray


OUTPUT_TYPES = ("pil", "pt", "np")


class BiDiffSRPipeline(DiffusionPipeline):
    """A binarized SR student (`unet`) with its diffusion process (`scheduler`) and SR factor (`scale`)."""

    model_cpu_offload_seq = "unet"  # diffusers' enable_model_cpu_offload: the one network, moved in when it runs

    def __init__(self, unet: BiDiffSRUNet, scheduler: DiffusionProcess, scale: int = 4):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(scale=scale)

    @property
    def process(self) -> DiffusionProcess:
        """The student's diffusion process (diffusers names the component slot `scheduler`)."""
        return self.scheduler

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """diffusers' save, plus the loader files diffusers' generic `from_pretrained(..., trust_remote_code=True)`
        needs, so a folder saved (or pushed with `push_to_hub`) this way loads both ways."""
        super().save_pretrained(save_directory, **kwargs)
        write_loaders(Path(save_directory), self.process)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                        torch_dtype: torch.dtype | None = None, revision: str | None = None, token: str | None = None,
                        cache_dir: str | None = None, local_files_only: bool = False, packed_kernels: bool = False,
                        variant: str | None = None, use_safetensors: bool | None = None, device_map=None,
                        **unknown) -> "BiDiffSRPipeline":
        """Load a published folder or a Hub id (fetched with huggingface_hub).

        Every file is checked against the folder's checksums.json when it has one, and no code from the folder is
        run: the components are built from this package's classes (diffusers' generic
        `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` goes through the loader files the folder
        carries, which import the same classes).

        Args:
            pretrained_model_name_or_path: a folder, or "owner/name" on the Hub (`revision`, `token`, `cache_dir`,
                `local_files_only` as huggingface_hub takes them).
            dtype: the network's dtype (`torch_dtype`: diffusers' older name for it).
            packed_kernels: the binarized convs compute on packed sign bits (real 1-bit arithmetic, CPU only;
                `students.packed_conv`).
            variant, use_safetensors=False, device_map: diffusers' keywords with no meaning for a published folder
                (one safetensors variant, one small model: `.to(device)`): refused, as is any other keyword.

        Returns:
            The pipeline.
        """
        refused = dict(unknown, **{k: v for k, v in (("variant", variant), ("device_map", device_map))
                                   if v is not None})
        if use_safetensors is False:
            refused["use_safetensors"] = False
        if refused:
            raise TypeError(f"BiDiffSRPipeline.from_pretrained does not take {', '.join(sorted(refused))}: a published "
                            "folder has one safetensors variant and loads whole (move it with .to(device))")
        torch_dtype = dtype if dtype is not None else torch_dtype
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            path = Path(snapshot_download(str(pretrained_model_name_or_path), revision=revision, token=token,
                                          cache_dir=cache_dir, local_files_only=local_files_only))
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{pretrained_model_name_or_path} is not a published BiDistill model "
                             "(no model_index.json)")
        try:
            index = json.loads((path / "model_index.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path / 'model_index.json'} is not valid JSON ({err}); download or publish it "
                             "again") from None
        found = index.get("_class_name")
        found = found[-1] if isinstance(found, list) else found  # [loader module, class] in published folders
        if found != cls.__name__:
            raise ValueError(f"{pretrained_model_name_or_path} holds a {found!r}, not a published student "
                             f"({cls.__name__})" + ("; a teacher is scored with python -m pipeline.evaluate --teacher"
                                                    if found == "Teacher" else ""))
        if (path / CHECKSUMS).is_file():  # published folders carry one; a damaged file must not load silently
            why = damage(path)
            if why:
                raise ValueError(f"the published model in {pretrained_model_name_or_path} is damaged: {why}; "
                                 "download or publish it again")
        else:
            warnings.warn(f"{pretrained_model_name_or_path} has no {CHECKSUMS}: its files cannot be verified",
                          stacklevel=2)
        unet = BiDiffSRUNet.from_pretrained(path / "unet", torch_dtype=torch_dtype)
        check_finite(unet, f"the model in {pretrained_model_name_or_path}")
        if packed_kernels:
            unet.use_packed_kernels()
        return cls(unet=unet, scheduler=load_process(path / "scheduler"), scale=int(index.get("scale", 4)))

    @torch.no_grad()
    def __call__(self, image: Image.Image | np.ndarray | Tensor | list, num_inference_steps: int | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None, tile_size: int | None = None,
                 tile_overlap: int | None = None, output_type: str = "pil", return_dict: bool = True,
                 progress: Callable[[int, int], object] | None = None):
        """Super-resolve LR images: a PIL image, a file path, an (h, w, 3) uint8 or [0, 1] float array, a (B, 3, h, w)
        or (3, h, w) tensor in [0, 1], or a list of these. `num_inference_steps` defaults to the process's (DDPM: 50;
        ResShift: all its steps; one-step students make one evaluation whatever it says); `seed` (or `generator`) makes
        the result reproducible. `tile_size` / `tile_overlap` (HR pixels) default to the process's official chopping
        when it has one (latent ResShift: 512 LR pixels, stride 448), else 256 / 32. `output_type`: "pil", "pt" (a
        (B, 3, H, W) float tensor in [0, 1]; a list of (3, H, W) ones when sizes differ) or "np" (a (B, H, W, 3) float
        array in [0, 1], likewise). Returns
        `SRPipelineOutput(images)`, or `(images,)` when `return_dict` is False. The progress bar counts network
        evaluations over all tiles and steps; `progress`, when given, is called with (evaluations done, total) after
        each one instead (the upscale command's plain lines)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_inference_steps is not None and (isinstance(num_inference_steps, bool)
                                                or not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a positive integer (or None for the process's default), "
                             f"got {num_inference_steps!r}")
        if not isinstance(self.process, DiffusionProcess):
            raise TypeError(f"the scheduler must be a BiDistill diffusion process (teachers.process.DiffusionProcess: "
                            f"DDPMProcess, ResShiftProcess), got {type(self.process).__name__}")
        multiple = self.unet.size_multiple * self.process.spatial_factor
        tile_size, tile_overlap = resolve_tiling(self.process, self.config.scale, tile_size, tile_overlap, 256)
        if tile_size < multiple or tile_size % multiple or not 0 <= tile_overlap < tile_size // 2:
            raise ValueError(f"tile_size={tile_size} must be a positive multiple of {multiple} and "
                             f"tile_overlap={tile_overlap} in [0, tile_size / 2)")
        lrs = self._as_tensors(image)
        device, scale = self.unet.device, self.config.scale
        if generator is None and seed is not None:
            generator = torch.Generator(device).manual_seed(seed)
        tiles = [num_tiles(lr.shape[-2] * scale, lr.shape[-1] * scale, tile_size, tile_overlap) for lr in lrs]
        batches = [-(-n // tile_batch_for(device)) for n in tiles]
        total = sum(batches) * num_evaluations(self.process, num_inference_steps)
        self.unet.eval()
        results = []
        done = [0]

        def report():
            done[0] += 1
            progress(done[0], total)

        with contextlib.nullcontext() if progress else self.progress_bar(total=total) as bar:
            for lr in lrs:
                lr = lr[None].to(device)
                sr = tiled_super_resolve(self.unet, self.process, upsample_cond(lr, scale), num_inference_steps,
                                         generator=generator, tile=tile_size, overlap=tile_overlap,
                                         progress=report if progress else bar.update, lr=lr)
                results.append(sr[0].clamp(0, 1).cpu())
        if output_type == "pil":
            results = [float_to_pil(r) for r in results]
        elif output_type == "np":
            shapes = {tuple(r.shape) for r in results}
            results = (np.stack([r.permute(1, 2, 0).numpy() for r in results]) if len(shapes) == 1
                       else [r.permute(1, 2, 0).numpy() for r in results])
        elif len({tuple(r.shape) for r in results}) == 1:  # "pt": one (B, 3, H, W) tensor, as diffusers' pipelines
            results = torch.stack(results)
        return SRPipelineOutput(images=results) if return_dict else (results,)

    @staticmethod
    def _as_tensors(image) -> list[Tensor]:
        """Inputs -> a list of (3, h, w) float tensors in [0, 1] (see `__call__`)."""
        if isinstance(image, (Image.Image, np.ndarray, str, os.PathLike)):
            image = [image]
        if isinstance(image, Tensor):
            if image.ndim == 3:
                image = image[None]
            if image.ndim != 4 or image.shape[1] != 3:
                raise ValueError(f"expected (B, 3, h, w) tensors in [0, 1], got shape {tuple(image.shape)}")
            return list(image.float())
        if not isinstance(image, (list, tuple)) or not image:
            raise TypeError(f"image must be a PIL image, a file path, a numpy array, a tensor or a non-empty list of "
                            f"them, got {type(image).__name__}")
        out = []
        for im in image:
            if isinstance(im, (str, os.PathLike)):  # a file path, as diffusers' load_image takes one
                try:
                    with Image.open(im) as opened:
                        im = opened.copy()
                except OSError as err:
                    raise ValueError(f"cannot read image {im}: {err}") from None
            if isinstance(im, Image.Image):
                out.append(torch.from_numpy(to_rgb8(im).astype(np.float32) / 255).permute(2, 0, 1))
            elif isinstance(im, np.ndarray):
                if im.ndim != 3 or im.shape[2] != 3:
                    raise ValueError(f"expected (h, w, 3) arrays, got shape {im.shape}")
                arr = im.astype(np.float32) / 255 if im.dtype == np.uint8 else im.astype(np.float32)
                out.append(torch.from_numpy(arr).permute(2, 0, 1))
            elif isinstance(im, Tensor):
                out.extend(BiDiffSRPipeline._as_tensors(im))
            else:
                raise TypeError(f"cannot super-resolve a {type(im).__name__}")
        return out
