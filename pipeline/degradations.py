"""Real-ESRGAN's second-order degradation, the LR model of ResShift's and SinSR's real-SR releases, as zsyOAOA/ResShift
runs it: batched torch on the training device, every draw seeded by the caller so a resumed run draws the same LR
images. The pipeline's steps, which draws are per batch or per sample, and where we differ from the release on
purpose: docs/degradations.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.data import DataError, ValImage, float_to_pil, read_image, seed_of
from pipeline.importers import read_yaml

KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
MIN_PATCH = 64  # HR pixels: the second blur (15 taps) must still fit a patch shrunk to 0.15 by the first resize


class DegradationError(ValueError):
    """A degradation setting that cannot be used; the message names the key."""


@dataclass(frozen=True)
class KernelSettings:
    """One pass's blur kernels (the release's `data.train.params`): sizes 3, 5, ..., size - 2, zero-padded to
    `size`."""

    size: int = 21
    kinds: tuple[str, ...] = KERNEL_KINDS
    probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: tuple[float, float] = (0.2, 3.0)
    betag: tuple[float, float] = (0.5, 4.0)
    betap: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1


@dataclass(frozen=True)
class PassSettings:
    """One pass's resize, noise and JPEG settings (the release's `degradation` section)."""

    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)


@dataclass(frozen=True)
class RealESRGANDegradation:
    """The settings of ResShift's real-SR release (`configs/realsr_swinunet_realesrgan256.yaml`) by default."""

    scale: int = 4
    kernel1: KernelSettings = field(default_factory=KernelSettings)
    kernel2: KernelSettings = field(default_factory=lambda: KernelSettings(size=15, sigma=(0.2, 1.5)))
    final_sinc_prob: float = 0.8
    pass1: PassSettings = field(default_factory=PassSettings)
    pass2: PassSettings = field(default_factory=lambda: PassSettings(
        resize_prob=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2), noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5)))
    second_order_prob: float = 0.5
    second_blur_prob: float = 0.8

    # ---- reading a release's option file ------------------------------------------------------------------------
    @classmethod
    def from_options(cls, options: dict, source: str, scale: int) -> "RealESRGANDegradation":
        """The settings in a release option file's `degradation` section and the kernel keys of its
        `data.train.params`; keys absent keep the release defaults, unknown or unsupported ones are errors naming
        the key."""
        deg = options.get("degradation")
        if not isinstance(deg, dict):
            raise DegradationError(f"{source}: no `degradation` section (a ResShift / SinSR training option file has "
                                   "one)")
        params = ((options.get("data") or {}).get("train") or {}).get("params") or {}
        self = cls(scale=scale)
        passes = {"": {}, "2": {}}
        for key, value in deg.items():
            base, n = (key[:-1], "2") if key.endswith("2") else (key, "")
            if key == "sf":
                if value != scale:
                    raise DegradationError(f"{source}: degradation.sf = {value!r}, but run.scale is {scale}")
            elif key in ("gt_size",):
                pass  # the patch size is data.patch_size / the stage's
            elif key in ("resize_back", "use_sharp"):
                if value:
                    raise DegradationError(f"{source}: degradation.{key} = {value!r} is not supported (the released "
                                           "real-SR settings have it off)")
            elif key == "second_order_prob" or key == "second_blur_prob":
                self = replace(self, **{key: _probability(value, f"{source}: degradation.{key}")})
            elif base in {f.name for f in fields(PassSettings)}:
                passes[n][base] = value
            else:
                raise DegradationError(f"{source}: degradation.{key} is not a Real-ESRGAN setting we know")
        kernels = {"": {}, "2": {}}
        names = {"blur_kernel_size": "size", "kernel_list": "kinds", "kernel_prob": "probs", "blur_sigma": "sigma",
                 "betag_range": "betag", "betap_range": "betap", "sinc_prob": "sinc_prob"}
        for key, value in params.items():
            base, n = (key[:-1], "2") if key.endswith("2") else (key, "")
            if base in names:
                kernels[n][names[base]] = value
            elif key == "final_sinc_prob":
                self = replace(self, final_sinc_prob=_probability(value, f"{source}: data.train.params.{key}"))
        self = replace(self, pass1=_settings(PassSettings, self.pass1, passes[""], f"{source}: degradation", ""),
                       pass2=_settings(PassSettings, self.pass2, passes["2"], f"{source}: degradation", "2"),
                       kernel1=_settings(KernelSettings, self.kernel1, kernels[""], f"{source}: data.train.params", ""),
                       kernel2=_settings(KernelSettings, self.kernel2, kernels["2"], f"{source}: data.train.params",
                                         "2"))
        self.check(source)
        return self

    def check(self, source: str) -> None:
        """Every setting in its range, or a DegradationError naming it."""
        for n, k in (("", self.kernel1), ("2", self.kernel2)):
            where = f"{source}: data.train.params"
            if k.size % 2 == 0 or k.size < 5:
                raise DegradationError(f"{where}.blur_kernel_size{n} = {k.size}: must be odd and >= 5")
            unknown = [kind for kind in k.kinds if kind not in KERNEL_KINDS]
            if unknown:
                raise DegradationError(f"{where}.kernel_list{n}: {unknown[0]!r} is not one of {KERNEL_KINDS}")
            _distribution(k.probs, len(k.kinds), f"{where}.kernel_prob{n}")
            for name in ("sigma", "betag", "betap"):
                _range(getattr(k, name), f"{where}.{name}{n}", low=1e-3)
            _probability(k.sinc_prob, f"{where}.sinc_prob{n}")
        for n, p in (("", self.pass1), ("2", self.pass2)):
            where = f"{source}: degradation"
            _distribution(p.resize_prob, 3, f"{where}.resize_prob{n}")
            _range(p.resize_range, f"{where}.resize_range{n}", low=1e-2)
            _range(p.noise_range, f"{where}.noise_range{n}", low=0.0)
            _range(p.poisson_scale_range, f"{where}.poisson_scale_range{n}", low=0.0)
            _range(p.jpeg_range, f"{where}.jpeg_range{n}", low=1.0, high=100.0)
            _probability(p.gaussian_noise_prob, f"{where}.gaussian_noise_prob{n}")
            _probability(p.gray_noise_prob, f"{where}.gray_noise_prob{n}")

    # ---- the degradation ----------------------------------------------------------------------------------------
    def __call__(self, hr: Tensor, generator: torch.Generator, choices: random.Random,
                 draws: dict | None = None) -> Tensor:
        """LR images (B, 3, H / scale, W / scale), 8-bit values in [0, 1], from HR images in [0, 1]. `generator`
        (on hr's device) draws the per-sample quantities, `choices` the per-batch ones; `draws`, when given, is
        filled with the per-sample draws (for tests of their distributions)."""
        b, _, h, w = hr.shape
        if h % self.scale or w % self.scale or min(h, w) < MIN_PATCH:
            raise DegradationError(f"Real-ESRGAN degradation needs HR sizes that are multiples of {self.scale} and at "
                                   f"least {MIN_PATCH} pixels; got {h}x{w}")
        draws = {} if draws is None else draws
        device, lh, lw = hr.device, h // self.scale, w // self.scale
        kernel1 = random_kernels(b, self.kernel1, generator, device, draws, "kernel1")
        kernel2 = random_kernels(b, self.kernel2, generator, device, draws, "kernel2")
        use_sinc = torch.rand(b, generator=generator, device=device) < self.final_sinc_prob
        sinc = sinc_kernels(_kernel_sizes(b, self.kernel2.size, generator, device),
                            _uniform(math.pi / 3, math.pi, b, generator, device), self.kernel2.size)
        pulse = torch.zeros_like(sinc)
        pulse[:, self.kernel2.size // 2, self.kernel2.size // 2] = 1
        final_kernel = torch.where(use_sinc[:, None, None], sinc, pulse)
        draws["final_sinc"] = use_sinc

        out = filter2d(hr.float(), kernel1)
        out = _random_resize(out, self.pass1, choices, None)
        out = _random_noise(out, self.pass1, choices, generator, draws, "pass1")
        out = jpeg(out.clamp(0, 1), _uniform(*self.pass1.jpeg_range, b, generator, device))
        second_blur = choices.random() < self.second_blur_prob  # drawn always, so later choices never shift
        if choices.random() < self.second_order_prob:
            if second_blur:
                out = filter2d(out, kernel2)
            out = _random_resize(out, self.pass2, choices, (h / self.scale, w / self.scale))
            out = _random_noise(out, self.pass2, choices, generator, draws, "pass2")
        quality2 = _uniform(*self.pass2.jpeg_range, b, generator, device)
        draws["jpeg_quality"] = quality2
        mode = RESIZE_MODES[choices.randrange(3)]
        if choices.random() < 0.5:
            out = filter2d(F.interpolate(out, size=(lh, lw), mode=mode), final_kernel)
            out = jpeg(out.clamp(0, 1), quality2)
        else:
            out = jpeg(out.clamp(0, 1), quality2)
            out = filter2d(F.interpolate(out, size=(lh, lw), mode=mode), final_kernel)
        return (out * 255).round().clamp(0, 255) / 255


# ---- kernels --------------------------------------------------------------------------------------------------------
def _uniform(low: float, high: float, n: int, generator: torch.Generator, device) -> Tensor:
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64) * (high - low) + low


def _kernel_sizes(n: int, size: int, generator: torch.Generator, device) -> Tensor:
    """Odd sizes 3, 5, ..., size - 2, uniform (the release's `range(3, blur_kernel_size, 2)`)."""
    return 3 + 2 * torch.randint(0, (size - 3) // 2, (n,), generator=generator, device=device)


def _grid(size: int, device) -> tuple[Tensor, Tensor]:
    """(xx, yy) of basicsr's `mesh_grid`: xx varies along columns, yy along rows, centred."""
    ax = torch.arange(size, device=device, dtype=torch.float64) - size // 2
    return ax[None, :].expand(size, size), ax[:, None].expand(size, size)


def shaped_kernels(kinds: Tensor, sizes: Tensor, sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, beta: Tensor,
                   pad_to: int) -> Tensor:
    """(B, pad_to, pad_to) normalised kernels: kind index into KERNEL_KINDS, odd support size, sigmas, rotation and
    shape; isotropic kinds use sigma_x alone and no rotation (basicsr's bivariate Gaussian, generalised Gaussian and
    plateau)."""
    iso = (kinds % 2 == 0)[:, None, None]
    sx, sy = sigma_x[:, None, None], torch.where(iso, sigma_x[:, None, None], sigma_y[:, None, None])
    th = torch.where(iso, torch.zeros_like(theta[:, None, None]), theta[:, None, None])
    c, s = torch.cos(th), torch.sin(th)
    # inverse of R diag(sx^2, sy^2) R^T = R diag(1/sx^2, 1/sy^2) R^T
    a = c**2 / sx**2 + s**2 / sy**2
    d = s**2 / sx**2 + c**2 / sy**2
    bxy = c * s * (1 / sx**2 - 1 / sy**2)
    xx, yy = _grid(pad_to, sigma_x.device)
    q = a * xx**2 + 2 * bxy * xx * yy + d * yy**2
    family = (kinds // 2)[:, None, None]
    bt = beta[:, None, None]
    kernel = torch.where(family == 0, torch.exp(-0.5 * q),
                         torch.where(family == 1, torch.exp(-0.5 * q.pow(bt)), 1 / (q.pow(bt) + 1)))
    return _support(kernel, sizes)


def sinc_kernels(sizes: Tensor, cutoff: Tensor, pad_to: int) -> Tensor:
    """(B, pad_to, pad_to) circular low-pass (sinc) kernels of odd support `sizes` and cutoff (radians), normalised
    (basicsr's `circular_lowpass_kernel`)."""
    xx, yy = _grid(pad_to, sizes.device)
    r = torch.sqrt(xx**2 + yy**2)[None]
    wc = cutoff[:, None, None]
    safe = torch.where(r > 0, r, torch.ones_like(r))
    kernel = torch.where(r > 0, wc * torch.special.bessel_j1(wc * safe) / (2 * math.pi * safe),
                         wc**2 / (4 * math.pi))
    return _support(kernel, sizes)


def _support(kernel: Tensor, sizes: Tensor) -> Tensor:
    """Zero outside each sample's centred size x size support, normalised to sum 1, float32."""
    xx, yy = _grid(kernel.shape[-1], kernel.device)
    half = ((sizes - 1) // 2)[:, None, None]
    kernel = torch.where((xx.abs() <= half) & (yy.abs() <= half), kernel, torch.zeros_like(kernel))
    return (kernel / kernel.sum(dim=(-2, -1), keepdim=True)).float()


def random_kernels(n: int, settings: KernelSettings, generator: torch.Generator, device, draws: dict,
                   name: str) -> Tensor:
    """One pass's per-sample blur kernels: with probability `sinc_prob` a sinc (cutoff in [pi/3, pi], or
    [pi/5, pi] from size 13 up), else a kind drawn by `probs` with its sigmas, rotation in [-pi, pi] and shape
    (beta in [low, 1] or [1, high], each half the time)."""
    sizes = _kernel_sizes(n, settings.size, generator, device)
    kind_ids = torch.tensor([KERNEL_KINDS.index(k) for k in settings.kinds], device=device)
    probs = torch.tensor(settings.probs, device=device, dtype=torch.float64)
    kinds = kind_ids[torch.multinomial(probs, n, replacement=True, generator=generator)]
    sigma_x = _uniform(*settings.sigma, n, generator, device)
    sigma_y = _uniform(*settings.sigma, n, generator, device)
    theta = _uniform(-math.pi, math.pi, n, generator, device)
    low_half = torch.rand(n, generator=generator, device=device) < 0.5
    betas = [torch.where(low_half, _uniform(r[0], 1, n, generator, device), _uniform(1, r[1], n, generator, device))
             for r in (settings.betag, settings.betap)]
    beta = torch.where(kinds < 4, betas[0], betas[1])
    use_sinc = torch.rand(n, generator=generator, device=device) < settings.sinc_prob
    cutoff = torch.where(sizes < 13, _uniform(math.pi / 3, math.pi, n, generator, device),
                         _uniform(math.pi / 5, math.pi, n, generator, device))
    kernels = torch.where(use_sinc[:, None, None], sinc_kernels(sizes, cutoff, settings.size),
                          shaped_kernels(kinds, sizes, sigma_x, sigma_y, theta, beta, settings.size))
    draws[name] = {"sizes": sizes, "kinds": torch.where(use_sinc, -1, kinds), "sigma_x": sigma_x, "beta": beta}
    return kernels


def filter2d(image: Tensor, kernels: Tensor) -> Tensor:
    """Each image convolved with its own (K, K) kernel, reflect-padded (basicsr's `filter2D`)."""
    b, c, h, w = image.shape
    k = kernels.shape[-1]
    padded = F.pad(image, (k // 2,) * 4, mode="reflect")
    weight = kernels.to(image.dtype)[:, None].repeat_interleave(c, dim=0)
    return F.conv2d(padded.reshape(1, b * c, h + k - 1, w + k - 1), weight, groups=b * c).reshape(b, c, h, w)


# ---- resize and noise -----------------------------------------------------------------------------------------------
def _random_resize(image: Tensor, settings: PassSettings, choices: random.Random,
                   lr_size: tuple[float, float] | None) -> Tensor:
    """Up, down or keep by a factor of the range (per batch), in a random mode; the second pass sizes relative to the
    LR size, as the release does."""
    kind = choices.choices(range(3), settings.resize_prob)[0]
    factor = (choices.uniform(1, settings.resize_range[1]), choices.uniform(settings.resize_range[0], 1), 1.0)[kind]
    mode = RESIZE_MODES[choices.randrange(3)]
    if lr_size is None:
        return F.interpolate(image, scale_factor=factor, mode=mode)
    return F.interpolate(image, size=(max(int(lr_size[0] * factor), 1), max(int(lr_size[1] * factor), 1)), mode=mode)


def _random_noise(image: Tensor, settings: PassSettings, choices: random.Random, generator: torch.Generator,
                  draws: dict, name: str) -> Tensor:
    """Gaussian (probability `gaussian_noise_prob`, per batch) or Poisson noise, grey for a sample with probability
    `gray_noise_prob`, clipped to [0, 1]."""
    b, device = image.shape[0], image.device
    gaussian = choices.random() < settings.gaussian_noise_prob
    gray = torch.rand(b, generator=generator, device=device) < settings.gray_noise_prob
    sigma = _uniform(*settings.noise_range, b, generator, device)
    scale = _uniform(*settings.poisson_scale_range, b, generator, device)
    draws[name] = {"gaussian": gaussian, "gray": gray, "sigma": sigma, "poisson_scale": scale}
    if gaussian:
        return add_gaussian_noise(image, sigma, gray, generator)
    return add_poisson_noise(image, scale, gray, generator)


def add_gaussian_noise(image: Tensor, sigma: Tensor, gray: Tensor, generator: torch.Generator) -> Tensor:
    """image + N(0, (sigma / 255)^2), one field for all channels where `gray`, clipped to [0, 1]."""
    b, c, h, w = image.shape
    colour = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    grey = torch.randn((b, 1, h, w), generator=generator, device=image.device, dtype=image.dtype)
    noise = torch.where(gray[:, None, None, None], grey.expand(b, c, h, w), colour)
    return (image + noise * (sigma.to(image.dtype) / 255)[:, None, None, None]).clamp(0, 1)


def _levels(image: Tensor) -> Tensor:
    """2^ceil(log2(number of distinct 8-bit values)) per sample: the release's Poisson photon count."""
    codes = (image * 255).round().clamp(0, 255).long().flatten(1)
    seen = torch.zeros(image.shape[0], 256, device=image.device).scatter_(1, codes, 1.0)
    return torch.exp2(torch.ceil(torch.log2(seen.sum(dim=1))))[:, None, None, None]


def add_poisson_noise(image: Tensor, scale: Tensor, gray: Tensor, generator: torch.Generator) -> Tensor:
    """image + scale x (Poisson(v x) / v - x), x the 8-bit-rounded image (or its grey where `gray`), clipped."""
    b, c, h, w = image.shape
    rounded = (image * 255).round().clamp(0, 255) / 255
    luma = (0.2989 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3])  # torchvision's rgb_to_grayscale
    luma = (luma * 255).round().clamp(0, 255) / 255
    v, v_luma = _levels(rounded), _levels(luma)
    colour = torch.poisson(rounded * v, generator=generator) / v - rounded
    grey = torch.poisson(luma * v_luma, generator=generator) / v_luma - luma
    noise = torch.where(gray[:, None, None, None], grey.expand(b, c, h, w), colour)
    return (image + noise * scale.to(image.dtype)[:, None, None, None]).clamp(0, 1)


# ---- JPEG -----------------------------------------------------------------------------------------------------------
_Y_TABLE = torch.tensor([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
                         [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
                         [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
                         [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]],
                        dtype=torch.float32).T  # DiffJPEG uses the standard tables transposed
_C_TABLE = torch.full((8, 8), 99.0)
_C_TABLE[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]],
                                dtype=torch.float32).T
_DCT = torch.cos((2 * torch.arange(8.0)[None, :] + 1) * torch.arange(8.0)[:, None] * math.pi / 16)  # [u, x]
_ALPHA = torch.outer(*(torch.tensor([1 / math.sqrt(2)] + [1.0] * 7),) * 2)


def _blockwise(plane: Tensor, table: Tensor, factor: Tensor) -> Tensor:
    """8x8 DCT, quantise with table x factor (rounded), dequantise, inverse DCT: (B, H, W) in [0, 255] units."""
    b, h, w = plane.shape
    m, alpha = _DCT.to(plane.device), _ALPHA.to(plane.device)
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3) - 128
    coefficients = 0.25 * alpha * (m @ blocks @ m.T)
    step = table.to(plane.device) * factor[:, None, None, None, None]
    restored = 0.25 * (m.T @ (alpha * torch.round(coefficients / step) * step) @ m) + 128
    return restored.transpose(2, 3).reshape(b, h, w)


def jpeg(image: Tensor, quality: Tensor) -> Tensor:
    """JPEG compression and decompression of [0, 1] images at per-sample `quality` in [1, 100] (float), as the
    release's DiffJPEG(differentiable=False): YCbCr, 2x2-averaged chroma, quantisation tables scaled by 5000 / q
    (q < 50) or 200 - 2 q, zero padding to multiples of 16, nearest chroma upsampling, clamp."""
    b, _, h, w = image.shape
    q = quality.to(image.device, torch.float32)
    factor = torch.where(q < 50, 5000 / q, 200 - 2 * q) / 100
    x = F.pad(image.float(), (0, -w % 16, 0, -h % 16)) * 255
    r, g, bl = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = F.avg_pool2d((-0.168736 * r - 0.331264 * g + 0.5 * bl + 128)[:, None], 2)[:, 0]
    cr = F.avg_pool2d((0.5 * r - 0.418688 * g - 0.081312 * bl + 128)[:, None], 2)[:, 0]
    y = _blockwise(y, _Y_TABLE, factor)
    cb = _blockwise(cb, _C_TABLE, factor).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2) - 128
    cr = _blockwise(cr, _C_TABLE, factor).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2) - 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
    return (rgb.clamp(0, 255) / 255)[:, :, :h, :w].to(image.dtype)


# ---- settings helpers -----------------------------------------------------------------------------------------------
def _settings(cls, current, values: dict, where: str, suffix: str):
    names = {f.name for f in fields(cls)}
    for key, value in values.items():
        if key not in names:
            raise DegradationError(f"{where}.{key}{suffix} is not a setting we know")
    try:
        return replace(current, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()})
    except TypeError as err:
        raise DegradationError(f"{where}: {err}") from None


def _probability(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DegradationError(f"{where} = {value!r}: must be a probability in [0, 1]")
    return float(value)


def _distribution(values, n: int, where: str) -> None:
    if (not isinstance(values, (list, tuple)) or len(values) != n
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in values)
            or abs(sum(values) - 1) > 1e-6):
        raise DegradationError(f"{where} = {values!r}: must be {n} probabilities that sum to 1")


def _range(values, where: str, low: float, high: float = math.inf) -> None:
    if (not isinstance(values, (list, tuple)) or len(values) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values)
            or not low <= values[0] <= values[1] <= high):
        raise DegradationError(f"{where} = {values!r}: must be [low, high] with {low} <= low <= high <= {high}")


DEGRADATIONS = ("bicubic", "realesrgan")


def build_degradation(recipe) -> RealESRGANDegradation | None:
    """The recipe's Real-ESRGAN settings (its `data.degradation_options` file's, else the release defaults), or None
    for bicubic LR."""
    d = recipe.data
    if d.degradation != "realesrgan":
        return None
    if not d.degradation_options:
        return RealESRGANDegradation(scale=recipe.run.scale)
    options = read_yaml(d.degradation_options, "degradation")
    return RealESRGANDegradation.from_options(options, d.degradation_options, recipe.run.scale)


def degraded_validation(images: list, degradation: RealESRGANDegradation, seed: int, cache: Path) -> list:
    """The validation images with LR made by `degradation`, each from its own fixed seed (`seed`, its name) on the
    CPU, so every run scores the same inputs; the LR images are written once as PNGs under `cache` (a folder per
    settings) and read back after."""
    settings = json.dumps(asdict(degradation), sort_keys=True)
    folder = Path(cache) / f"realesrgan-{hashlib.sha256(settings.encode()).hexdigest()[:12]}-seed{seed}"
    out = []
    for image in images:
        file = folder / f"{image.name}x{degradation.scale}.png"
        try:
            lr = read_image(file).float() / 255
        except DataError:  # not made yet (or damaged): make it
            lr = None
        if lr is None or lr.shape[-2:] != image.lr.shape[-2:]:
            s = seed_of(seed, image.name)
            lr = degradation(image.hr[None], torch.Generator().manual_seed(s), random.Random(s))[0]
            folder.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.partial.png")
            float_to_pil(lr).save(tmp)
            tmp.replace(file)
        out.append(ValImage(image.name, image.hr, lr))
    return out

