"""The pixel-space conditional DDPM of BI-DiffSR and SR3: linear betas, epsilon prediction, L1, DDIM sampling (and
SR3's ancestral sampler, signed data and noise-level time input for imported SR3 teachers). Official settings, the
x0 clip and why it differs from the official default: docs/processes.md.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  diffusers finds loaders by this name
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from teachers.process import LOSSES, DiffusionProcess, check_prediction_type, per_sample

PIL_BITS = 22  # PIL's fixed-point precision for 8-bit resampling (Resample.c)

CLIP_CHOICES = {"data": None, "official": (-1.0, 1.0), "none": None}  # "data": DATA_RANGES[data_range]
DATA_RANGES = {"unit": (0.0, 1.0), "signed": (-1.0, 1.0)}  # images (and conditions) in [0, 1] or, as SR3, [-1, 1]
TIME_INPUTS = ("index", "noise_level")  # what the denoiser is given: the timestep, or SR3's sqrt(alpha_bar_t)
SAMPLERS = ("ddim", "ddpm")  # DDIM steps (eta 0 / 1), or SR3's ancestral posterior steps
CONDITION_RESIZES = ("opencv", "pil")  # BI-DiffSR's bicubic condition, or SR3's (PIL bicubic, 8-bit)


class DDPMProcess(DiffusionProcess):
    """Conditional DDPM in [0, 1] pixel space; `prediction_type` "epsilon" (multi-step) or "sample" (x0, e.g. a
    one-step student). `one_step=True`: the sampler evaluates the model once at T-1 from pure noise."""

    name = "ddpm"
    prediction_types = ("epsilon", "sample")

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 2000,
        beta_start: float = 1e-6,
        beta_end: float = 1e-2,
        prediction_type: str = "epsilon",
        loss: str = "l1",
        clip_sample: str = "data",
        num_inference_steps: int = 50,
        one_step: bool = False,
        data_range: str = "unit",
        time_input: str = "index",
        sampler: str = "ddim",
        condition_resize: str = "opencv",
    ):
        if num_train_timesteps < 2:
            raise ValueError(f"DDPMProcess: num_train_timesteps={num_train_timesteps} must be at least 2")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"DDPMProcess: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        check_prediction_type(self, prediction_type)
        if loss not in LOSSES:
            raise ValueError(f"DDPMProcess: loss={loss!r} is not one of {tuple(LOSSES)}")
        if clip_sample not in CLIP_CHOICES:
            raise ValueError(f"DDPMProcess: clip_sample={clip_sample!r} is not one of {tuple(CLIP_CHOICES)}")
        if not 1 <= num_inference_steps <= num_train_timesteps:
            raise ValueError(f"DDPMProcess: num_inference_steps={num_inference_steps} must be in [1, "
                             f"{num_train_timesteps}]")
        for key, value, choices in (("data_range", data_range, DATA_RANGES), ("time_input", time_input, TIME_INPUTS),
                                    ("sampler", sampler, SAMPLERS), ("condition_resize", condition_resize,
                                                                     CONDITION_RESIZES)):
            if value not in choices:
                raise ValueError(f"DDPMProcess: {key}={value!r} is not one of {tuple(choices)}")
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    @property
    def default_deterministic(self) -> bool:
        return self.config.sampler == "ddim"  # DDIM with eta 0; SR3's ancestral sampler draws noise

    @property
    def clip_range(self):
        if self.config.clip_sample == "data":
            return DATA_RANGES[self.config.data_range]
        return CLIP_CHOICES[self.config.clip_sample]

    def encode(self, image: Tensor) -> Tensor:
        return image if self.config.data_range == "unit" else image * 2 - 1

    def remake_condition(self, cond: Tensor, lr: Tensor | None) -> Tensor:
        """SR3's condition (`condition_resize="pil"`): PIL's bicubic resize of the 8-bit LR to cond's size."""
        if self.config.condition_resize == "opencv" or lr is None:
            return cond
        return pil_bicubic_resize(lr, tuple(cond.shape[-2:])).to(cond.dtype)

    def decode(self, x: Tensor) -> Tensor:
        return (x if self.config.data_range == "unit" else (x + 1) / 2).clamp(0.0, 1.0)

    def for_student(self) -> "DDPMProcess":
        return self if self.config.time_input == "index" else self.derived(time_input="index")

    def model_time(self, t: Tensor) -> Tensor:
        """The timestep index, or SR3's noise level sqrt(alpha_bar_t) (`time_input="noise_level"`)."""
        if self.config.time_input == "index":
            return t
        return self.alphas_cumprod.to(t.device)[t.long()].sqrt()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        ab = per_sample(self.alphas_cumprod, t, x0)
        return ab**0.5 * x0 + (1 - ab) ** 0.5 * noise

    def target(self, x0: Tensor, noise: Tensor, y: Tensor) -> Tensor:
        return noise if self.config.prediction_type == "epsilon" else x0

    def _x0_and_eps(self, output: Tensor, x_t: Tensor, t) -> tuple[Tensor, Tensor]:
        ab = per_sample(self.alphas_cumprod, t, x_t)
        if self.config.prediction_type == "epsilon":
            return (x_t - (1 - ab) ** 0.5 * output) / ab**0.5, output
        return output, (x_t - ab**0.5 * output) / (1 - ab) ** 0.5

    def predict_x0(self, output: Tensor, x_t: Tensor, t, y: Tensor, clip: bool = True) -> Tensor:
        x0 = self._x0_and_eps(output, x_t, t)[0]
        return x0.clamp(*self.clip_range) if clip and self.clip_range else x0

    @property
    def default_inference_steps(self) -> int:
        return int(self.config.num_inference_steps)

    def inference_timesteps(self, num_inference_steps: int | None) -> list[int]:
        """DDIM "leading" spacing, offset 0: 50 of 2000 -> 1960, 1920, ..., 40, 0."""
        n = self.default_inference_steps if num_inference_steps is None else int(num_inference_steps)
        if not 1 <= n <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be between 1 and "
                             f"{self.num_train_timesteps} for this process")
        ratio = self.num_train_timesteps // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(int).tolist()

    def prior(self, y: Tensor, noise: Tensor) -> Tensor:
        return noise

    def step(self, output: Tensor, t: int, t_prev: int, x_t: Tensor, y: Tensor, deterministic: bool = True,
             generator: torch.Generator | None = None) -> Tensor:
        """DDIM with eta 0 (deterministic) or eta 1 (stochastic), or with `sampler="ddpm"` SR3's ancestral step: the
        mean of q(x_prev | x_t, x0) from the clipped x0, plus its standard deviation times noise (none at the last
        step or when deterministic). alpha_bar before the first index is 1."""
        ab_t = self.alphas_cumprod[t]
        ab_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        x0, eps = self._x0_and_eps(output, x_t, t)
        if self.clip_range:
            x0 = x0.clamp(*self.clip_range)
        if self.config.sampler == "ddpm":
            alpha = ab_t / ab_prev
            mean = (ab_prev**0.5 * (1 - alpha) * x0 + alpha**0.5 * (1 - ab_prev) * x_t) / (1 - ab_t)
            if deterministic or t_prev < 0:
                return mean
            std = ((1 - alpha) * (1 - ab_prev) / (1 - ab_t)) ** 0.5
            return mean + std * randn_tensor(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        variance = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
        std = 0.0 if deterministic else variance**0.5
        prev = ab_prev**0.5 * x0 + (1 - ab_prev - std**2) ** 0.5 * eps
        if not deterministic:
            prev = prev + std * randn_tensor(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return prev

    def one_step_variant(self) -> "DDPMProcess":
        return self.derived(prediction_type="sample", loss="mse", one_step=True)


def _pil_weights(in_size: int, out_size: int) -> Tensor:
    """(out, in) fixed-point weights of PIL's bicubic (a = -0.5) resize along one axis (Resample.c: the window is
    cut at the image's edges and renormalised, each weight rounded to PIL_BITS bits)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        x = np.abs((np.arange(lo, hi) - center + 0.5) / filterscale)
        w = np.where(x < 1, (1.5 * x - 2.5) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * -0.5, 0.0))
        weights[i, lo:hi] = w / w.sum()
    return torch.from_numpy(np.trunc(weights * (1 << PIL_BITS) + np.where(weights < 0, -0.5, 0.5)))


def pil_bicubic_resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """[0, 1] images (their 8-bit values) resized as PIL's `Image.resize(size, Image.BICUBIC)` resizes 8-bit RGB:
    the horizontal pass first, each pass in fixed point and rounded to 8 bits (SR3's `data/prepare_data.py`)."""
    h, w = image.shape[-2:]
    levels = (image.double() * 255).round().clamp(0, 255)
    for axis, (n_in, n_out) in ((-1, (w, size[1])), (-2, (h, size[0]))):
        if n_in == n_out:
            continue
        weights = _pil_weights(n_in, n_out).to(image.device)  # integer sums stay exact in float64 (< 2^53)
        moved = levels.movedim(axis, -1)
        levels = torch.floor((moved @ weights.T + (1 << (PIL_BITS - 1))) / (1 << PIL_BITS)).clamp(0, 255)
        levels = levels.movedim(-1, axis)
    return levels.float() / 255
