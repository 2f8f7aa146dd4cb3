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

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import snapshot_download
from PIL import Image
from torch import Tensor

from pipeline.checksums import CHECKSUMS, damage
from pipeline.data import to_rgb8
from pipeline.resize import upsample_cond
from students.bidiffsr import BIDiffSRUNet
from teachers.base import pad_to_multiple
from teachers.process import DiffusionProcess, sample


@torch.no_grad()
def super_resolve(student: torch.nn.Module, process: DiffusionProcess, cond: Tensor, num_inference_steps: int | None = None,
                  generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    """SR images in [0, 1] from a student on its process, `cond` = bicubic(LR); `noise` (at the padded size) fixes
    the starting point."""
    return sample(lambda x, y, t: student(x, y, t).float(), process, cond, num_inference_steps,
                  size_multiple=student.size_multiple, generator=generator, noise=noise)


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
                        tile_batch: int = 8) -> Tensor:
    """`super_resolve` over overlapping tile x tile windows of one (1, 3, H, W) condition, blended. `student` is any
    denoiser with a `size_multiple` (a teacher's `unet` too)."""
    _, c, h, w = cond.shape
    if h <= tile and w <= tile:
        return super_resolve(student, process, cond, num_inference_steps, generator=generator)
    if tile % student.size_multiple or not 0 <= overlap < tile // 2:
        raise ValueError(f"tile_size={tile} must be a multiple of {student.size_multiple} and overlap={overlap} "
                         f"in [0, tile_size / 2)")
    noise = randn_tensor(cond.shape, generator=generator, device=cond.device, dtype=cond.dtype)
    boxes = [(y, x) for y in _starts(h, tile, overlap) for x in _starts(w, tile, overlap)]
    th, tw = min(tile, h), min(tile, w)
    out = torch.zeros(1, c, h, w, device=cond.device)
    weight = torch.zeros(1, 1, h, w, device=cond.device)
    window = _ramp(th, overlap if h > tile else 0, cond.device)[:, None] * _ramp(tw, overlap if w > tile else 0,
                                                                                cond.device)[None, :]
    for i in range(0, len(boxes), tile_batch):
        chunk = boxes[i : i + tile_batch]
        conds = torch.cat([cond[:, :, y : y + th, x : x + tw] for y, x in chunk])
        noises = torch.cat([noise[:, :, y : y + th, x : x + tw] for y, x in chunk])
        srs = super_resolve(student, process, conds, num_inference_steps, generator=generator,  # stochastic steps
                            noise=pad_to_multiple(noises, student.size_multiple))
        for (y, x), sr in zip(chunk, srs):
            out[:, :, y : y + th, x : x + tw] += sr * window
            weight[:, :, y : y + th, x : x + tw] += window
    return out / weight


@dataclass
class SRPipelineOutput(BaseOutput):
    images: list[Image.Image] | Tensor


class BiDiffSRPipeline(DiffusionPipeline):
    """A binarized SR student (`unet`) with its diffusion process (`scheduler`) and SR factor (`scale`)."""

    def __init__(self, unet: BIDiffSRUNet, scheduler: DiffusionProcess, scale: int = 4):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(scale=scale)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "BiDiffSRPipeline":
        """Load from a local folder or a Hub id. A Hub repository is fetched with huggingface_hub first: diffusers'
        own download path only accepts custom components whose code lives in the repository. Every file is checked
        against the folder's checksums.json when it has one."""
        path = pretrained_model_name_or_path
        if not os.path.isdir(path):
            path = snapshot_download(str(path), revision=kwargs.pop("revision", None), token=kwargs.pop("token", None),
                                     cache_dir=kwargs.pop("cache_dir", None))
        if (Path(path) / CHECKSUMS).is_file():  # published folders carry one; a damaged file must not load silently
            why = damage(path)
            if why:
                raise ValueError(f"the published model in {pretrained_model_name_or_path} is damaged: {why}; "
                                 "download or publish it again")
        return super().from_pretrained(path, **kwargs)

    @torch.no_grad()
    def __call__(self, image: Image.Image | list[Image.Image] | Tensor, num_inference_steps: int | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None, tile_size: int = 256,
                 tile_overlap: int = 32, output_type: str = "pil") -> SRPipelineOutput:
        """Super-resolve LR images. `num_inference_steps` defaults to the process's (DDPM: 50; ResShift: all its
        steps; ignored by one-step students); `seed` (or `generator`) makes the result reproducible; `output_type`
        is "pil" or "pt" (a list of (3, H, W) tensors in [0, 1])."""
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        device = self.unet.device
        if generator is None and seed is not None:
            generator = torch.Generator(device).manual_seed(seed)
        self.unet.eval()
        results = []
        for lr in self._as_tensors(image):
            cond = upsample_cond(lr[None].to(device), self.config.scale).clamp(0, 1)
            results.append(tiled_super_resolve(self.unet, self.scheduler, cond, num_inference_steps,
                                               generator=generator, tile=tile_size, overlap=tile_overlap)[0].cpu())
        if output_type == "pil":
            results = [Image.fromarray((r.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()) for r in results]
        return SRPipelineOutput(images=results)

    @staticmethod
    def _as_tensors(image) -> list[Tensor]:
        if isinstance(image, Image.Image):
            image = [image]
        if isinstance(image, Tensor):
            if image.ndim == 3:
                image = image[None]
            if image.ndim != 4 or image.shape[1] != 3:
                raise ValueError(f"expected (B, 3, h, w) tensors in [0, 1], got shape {tuple(image.shape)}")
            return list(image.float())
        return [torch.from_numpy(to_rgb8(im).astype(np.float32) / 255).permute(2, 0, 1) for im in image]
