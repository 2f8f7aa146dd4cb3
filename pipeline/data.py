"""Training and validation data: HR images through `datasets`, benchmark LR, aligned patches and augmentation.

Training: a folder of HR images (datasets' `imagefolder`) or a Hub dataset is mapped once (cached by datasets) to
(HR modcropped to the scale, LR by MATLAB-compatible bicubic). A sample is a random LR-grid-aligned patch: HR crop,
the matching LR crop, and the condition = OpenCV-style bicubic upsampling of the LR, cut from an upsampled region
with a 2-pixel margin so it equals a crop of the fully upsampled LR, as in the official loader; then a random
horizontal flip, vertical flip and transpose applied jointly. Images are RGB in [0, 1]: grayscale is replicated to
three channels, an alpha channel is dropped.

Every random choice of sample `i` comes from a generator seeded with (seed, i), and a step's batch is a fixed range
of sample indices for each process, so data order survives a resume and splits cleanly across processes.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from pipeline.image_files import (IMAGE_SUFFIXES, UNREADABLE, DataError, image_files,  # noqa: F401  (re-exported)
                                  training_image_files)
from pipeline.resize import make_lr, modcrop, upsample_cond


def to_rgb8(image: Image.Image) -> np.ndarray:
    """PIL image -> (H, W, 3) uint8 RGB. 16-bit images (modes I;16*, and I holding 16-bit values) are scaled by
    1/257, not clipped (Pillow's convert("RGB") turns them white); palette, gray+alpha, RGBA and CMYK go through
    Pillow's conversion; floating-point images (mode F) have no agreed range and are refused."""
    mode = image.mode
    if mode == "F":
        raise ValueError("floating-point images (Pillow mode F) have no agreed value range; save the image as an "
                         "8- or 16-bit PNG")
    if mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"a {mode} image with values outside [0, 65535] cannot be read as a photo")
        gray = np.round(values / 257).astype(np.uint8) if mode != "I" or values.max() > 255 else values.astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def to_uint8_tensor(image: Image.Image) -> Tensor:
    """PIL image of any mode -> (3, H, W) uint8 RGB (see `to_rgb8`)."""
    return torch.from_numpy(to_rgb8(image)).permute(2, 0, 1).contiguous()


def to_pil(img: Tensor) -> Image.Image:
    """(3, H, W) uint8 -> PIL RGB."""
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def float_to_pil(img: Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] (clamped) -> 8-bit PIL RGB, rounded."""
    return to_pil((img.detach().clamp(0, 1) * 255).round().byte().cpu())


def load_hr_dataset(folder: str = "", hub: str = "", split: str = "train", image_column: str = "image"):
    """HR images as a `datasets.Dataset` with an undecoded image column (so file names stay available)."""
    import datasets

    if folder:
        # the files named one by one (escaped): a folder name with [ ] is not a pattern, and a metadata.jsonl beside
        # the images is not read as labels
        files = [glob.escape(str(f)) for f in training_image_files(folder)]
        if not files:
            raise DataError(f"folder {folder} holds no images")
        ds = datasets.load_dataset("imagefolder", data_files={"train": files}, split="train")
    else:
        ds = datasets.load_dataset(hub, split=split)
    if image_column not in ds.column_names:
        raise DataError(f"dataset {folder or hub} has no column {image_column!r} (data.image_column); "
                         f"columns: {', '.join(ds.column_names)}")
    return ds.cast_column(image_column, datasets.Image(decode=False))


def _open(cell: dict) -> Image.Image:
    return Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"])


def make_pairs(ds, scale: int, min_hr_size: int, image_column: str = "image", source: str = "dataset",
               num_proc: int = 0):
    """Map HR images to {hr, lr} PNG pairs (cached by datasets, built by `num_proc` processes; 0: min(8, CPUs));
    drop, with a warning naming each file, images smaller than `min_hr_size` on a side or unreadable."""
    import datasets

    def convert(example, idx):
        cell = example[image_column]
        name = cell.get("path") or f"{source}[{idx}]"
        try:
            hr = modcrop(to_uint8_tensor(_open(cell)), scale)
        except Exception as err:  # a corrupt file must not stop a long run: report it and skip it
            return {"hr": None, "lr": None, "name": name, "problem": f"unreadable ({err})"}
        if min(hr.shape[-2:]) < min_hr_size:
            return {"hr": None, "lr": None, "name": name,
                    "problem": f"{hr.shape[-1]}x{hr.shape[-2]} is smaller than the {min_hr_size}px patch"}
        return {"hr": to_pil(hr), "lr": to_pil(make_lr(hr, scale)), "name": name, "problem": ""}

    features = datasets.Features({"hr": datasets.Image(), "lr": datasets.Image(), "name": datasets.Value("string"),
                                  "problem": datasets.Value("string")})
    num_proc = num_proc or min(8, os.cpu_count() or 1)
    parallel = num_proc > 1 and len(ds) >= 16 * num_proc  # a few images are faster in one process
    pairs = ds.map(convert, with_indices=True, remove_columns=ds.column_names, features=features,
                   desc=f"bicubic LR x{scale}", num_proc=num_proc if parallel else None)
    problems = [(n, p) for n, p in zip(pairs["name"], pairs["problem"]) if p]
    for name, problem in problems:
        warnings.warn(f"skipping training image {name}: {problem}", stacklevel=2)
    if problems:
        pairs = pairs.filter(lambda p: not p, input_columns="problem")
    if len(pairs) == 0:
        raise DataError(f"no usable training images in {source} (every image was skipped; see the warnings)")
    return pairs


def seed_of(*parts: int | str) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") & (2**63 - 1)


def augment(tensors: list[Tensor], hflip: bool, vflip: bool, transpose: bool) -> list[Tensor]:
    """BasicSR's augment (hflip + rot as vflip and transpose), the same for every tensor of a pair."""
    out = []
    for x in tensors:
        if hflip:
            x = x.flip(-1)
        if vflip:
            x = x.flip(-2)
        if transpose:
            x = x.transpose(-1, -2)
        out.append(x.contiguous())
    return out


def crop_pair(hr: Tensor, lr: Tensor, top: int, left: int, patch: int, scale: int) -> tuple[Tensor, Tensor, Tensor]:
    """(HR patch, condition patch, LR patch) at LR position (top, left). The condition is the same as cropping the
    bicubic upsampling of the whole LR image: only a region with a 2-pixel margin (the reach of the bicubic taps)
    is upsampled, and the margin is clamped only where the image itself ends."""
    lp = patch // scale
    lh, lw = lr.shape[-2:]
    t0, l0 = max(top - 2, 0), max(left - 2, 0)
    region = lr[:, t0 : min(top + lp + 2, lh), l0 : min(left + lp + 2, lw)]
    up = upsample_cond(region[None], scale)[0]
    oy, ox = (top - t0) * scale, (left - l0) * scale
    cond = up[:, oy : oy + patch, ox : ox + patch]
    hr_patch = hr[:, top * scale : top * scale + patch, left * scale : left * scale + patch]
    return hr_patch, cond, lr[:, top : top + lp, left : left + lp]


class PatchDataset(Dataset):
    """Sample index -> {hr, cond, lr} patch. Index i uses image perm_e[i mod n] of epoch e = i // n and its own
    random crop and augmentation, all seeded from (seed, i)."""

    def __init__(self, pairs, patch_size: int, scale: int, seed: int):
        self.pairs, self.patch, self.scale, self.seed = pairs, patch_size, scale, seed
        self.n = len(pairs)

    def __len__(self) -> int:  # indices are unbounded; a length only for samplers that ask
        return 2**62

    @lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(seed_of(self.seed, -1, epoch)))

    @lru_cache(maxsize=16)  # small data sets (the quickstart) decode each PNG once per worker
    def _decoded(self, row: int) -> tuple[Tensor, Tensor]:
        example = self.pairs[row]
        return to_uint8_tensor(example["hr"]), to_uint8_tensor(example["lr"])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        epoch, pos = divmod(index, self.n)
        hr8, lr8 = self._decoded(int(self._permutation(epoch)[pos]))
        hr, lr = hr8.float() / 255, lr8.float() / 255
        lp = self.patch // self.scale
        g = torch.Generator().manual_seed(seed_of(self.seed, index))
        lh, lw = lr.shape[-2:]
        top = int(torch.randint(0, lh - lp + 1, (1,), generator=g))
        left = int(torch.randint(0, lw - lp + 1, (1,), generator=g))
        flips = torch.rand(3, generator=g) < 0.5
        hr_patch, cond, lr_patch = crop_pair(hr, lr, top, left, self.patch, self.scale)
        hr_patch, cond, lr_patch = augment([hr_patch, cond, lr_patch], *flips.tolist())
        return {"hr": hr_patch, "cond": cond, "lr": lr_patch}


class StepBatchSampler(Sampler):
    """Endless batches of sample indices for one process: micro-batch m of process r out of W holds indices
    (m W + r) B .. (m W + r) B + B - 1. Starting at `start_micro` resumes exactly."""

    def __init__(self, batch_size: int, rank: int = 0, world_size: int = 1, start_micro: int = 0):
        self.batch_size, self.rank, self.world_size, self.start = batch_size, rank, world_size, start_micro

    def __iter__(self):
        m = self.start
        while True:
            base = (m * self.world_size + self.rank) * self.batch_size
            yield list(range(base, base + self.batch_size))
            m += 1


def read_image(file: Path) -> Tensor:
    """An image file -> (3, H, W) uint8 RGB; an unreadable one is a DataError naming it."""
    try:
        with Image.open(file) as image:
            return to_uint8_tensor(image)
    except UNREADABLE as err:
        raise DataError(f"cannot read image {file}: {err}") from None


@dataclass
class ValImage:
    name: str
    hr: Tensor | None  # (3, H, W) in [0, 1], H and W multiples of the scale; None for a real LR image without HR
    lr: Tensor  # (3, H / s, W / s) in [0, 1]


def load_lr_images(lr_dir: str | Path, max_images: int = 0) -> list[ValImage]:
    """A folder of LR images without HR (real-world inputs, e.g. RealSR, RealSet): evaluated as samples and a grid,
    with no reference metrics."""
    files = image_files(lr_dir)
    if not files:
        raise DataError(f"LR folder {lr_dir} holds no images")
    return [ValImage(f.stem, None, read_image(f).float() / 255) for f in files[: max_images or None]]


def load_validation(hr_dir: str | Path, scale: int, lr_dir: str | Path = "", max_images: int = 0,
                    crop: int = 0) -> list[ValImage]:
    """Benchmark images, sorted by name, HR modcropped to `scale`.

    Args:
        hr_dir: a folder of HR images (Set5 layout).
        scale: the SR factor.
        lr_dir: a folder of pre-made LR images named `<stem>x<scale>.png`; those missing (or all, when "") are made
            from HR with MATLAB-compatible bicubic.
        max_images: the first N images only; 0: all.
        crop: > 0 takes a centred crop x crop HR region (and makes its LR).

    Returns:
        One `ValImage` per file.
    """
    hr_dir = Path(hr_dir)
    files = image_files(hr_dir)
    if not files:
        raise DataError(f"validation folder {hr_dir} holds no images")
    if max_images:
        files = files[:max_images]
    images = []
    for f in files:
        hr = modcrop(read_image(f), scale)
        lr_file = Path(lr_dir) / f"{f.stem}x{scale}.png" if lr_dir else None
        if crop:
            c = crop - crop % scale
            h, w = hr.shape[-2:]
            if min(h, w) < c:
                raise DataError(f"validation image {f} ({w}x{h}) is smaller than data.val_crop={crop}")
            top, left = ((h - c) // 2) // scale * scale, ((w - c) // 2) // scale * scale
            hr, lr = hr[:, top : top + c, left : left + c], None
        elif lr_file is not None and not lr_file.is_file():
            present = ", ".join(p.name for p in image_files(lr_dir)[:5]) or "no images"
            raise DataError(f"{lr_dir} has no {lr_file.name}, the x{scale} LR of {f} (it holds {present}); name LR "
                            f"files <HR stem>x{scale}.png, or leave the LR folder out to make LR with MATLAB bicubic")
        elif lr_file is not None:
            lr = read_image(lr_file)
            if lr.shape[-2] * scale != hr.shape[-2] or lr.shape[-1] * scale != hr.shape[-1]:
                raise DataError(f"{lr_file} is {lr.shape[-1]}x{lr.shape[-2]}, which is not the x{scale} LR of "
                                 f"{f} ({hr.shape[-1]}x{hr.shape[-2]} after modcrop)")
        else:
            lr = None
        lr = make_lr(hr, scale) if lr is None else lr
        images.append(ValImage(f.stem, hr.float() / 255, lr.float() / 255))
    return images
