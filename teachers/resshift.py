"""ResShift: residual-shifting diffusion ("ResShift: Efficient Diffusion Model for Image Super-resolution by Residual
Shifting"; zsyOAOA/ResShift) as a diffusers-style scheduler and a pixel-space teacher.

The Markov chain shifts the residual e0 = y - x0 from the HR image x0 to the upsampled LR y in T (~15) steps:
    x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps,    x_T ~ y + kappa sqrt(eta_T) eps,
with sqrt(eta_t) growing geometrically (in a power-warped index) from min_noise_level / kappa to etas_end. The
denoiser predicts x0 from x_t / sqrt(kappa^2 eta_t + 1), y and the step index i = t - 1 in [0, T - 1].

This teacher runs in pixel space on [-1, 1] images (its public API takes and returns [0, 1]); the official one runs
on VQGAN-f4 latents, which would need the autoencoder (its weights cannot be downloaded here) in front of
`add_noise` and behind `sample`, with x0 clipping turned off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from teachers.base import Teacher, pad_to_multiple, per_sample_timesteps
from teachers.sr3 import SR3UNet


@dataclass
class ResShiftSchedulerOutput(BaseOutput):
    prev_sample: Tensor
    pred_original_sample: Tensor


def _per_sample(table: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """table[t] shaped (B, 1, 1, 1) for broadcasting over `like`; t a scalar or one index per sample."""
    t = per_sample_timesteps(t, like.shape[0], like.device)
    return table.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class ResShiftScheduler(SchedulerMixin, ConfigMixin):
    """The ResShift process: eta schedule, forward noising, input scaling, ancestral and deterministic steps.

    Index convention as the official code: i = 0 .. T-1, i = 0 least noisy; "eta_{t-1}" of step i is eta[i-1]
    (0 for i = 0).
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 15,
        kappa: float = 2.0,
        power: float = 0.3,
        min_noise_level: float = 0.04,
        etas_end: float = 0.99,
    ):
        if num_train_timesteps < 2:
            raise ValueError(f"ResShiftScheduler: num_train_timesteps={num_train_timesteps} must be at least 2")
        if kappa <= 0 or not 0 < min_noise_level < 1 or not 0 < etas_end < 1:
            raise ValueError("ResShiftScheduler: kappa must be > 0 and min_noise_level, etas_end in (0, 1); got "
                             f"kappa={kappa}, min_noise_level={min_noise_level}, etas_end={etas_end}")
        n = num_train_timesteps
        s1 = min(min_noise_level / kappa, min_noise_level)
        base = np.exp(np.log(etas_end / s1) / (n - 1))
        beta = (np.arange(n, dtype=np.float64) / (n - 1)) ** power * (n - 1)
        sqrt_etas = s1 * base**beta
        etas = sqrt_etas**2
        etas_prev = np.concatenate([[0.0], etas[:-1]])
        alpha = etas - etas_prev
        self.sqrt_etas = torch.from_numpy(sqrt_etas)
        self.etas = torch.from_numpy(etas)
        self.etas_prev = torch.from_numpy(etas_prev)
        self.posterior_mean_coef_xt = torch.from_numpy(etas_prev / etas)
        self.posterior_mean_coef_x0 = torch.from_numpy(alpha / etas)
        self.posterior_variance = torch.from_numpy(kappa**2 * etas_prev / etas * alpha)
        # SinSR's deterministic sampler: x_{t-1} = k x0_hat + m x_t + j y
        self.ddim_m = torch.from_numpy(np.sqrt(etas_prev / etas))
        self.ddim_j = torch.from_numpy(etas_prev - np.sqrt(etas_prev * etas))
        self.ddim_k = torch.from_numpy(1.0 - etas_prev + np.sqrt(etas_prev * etas) - np.sqrt(etas_prev / etas))
        self.timesteps = torch.arange(n - 1, -1, -1)
        self.num_inference_steps = n

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """ResShift samples every step of its short chain: T-1, ..., 0."""
        n = self.config.num_train_timesteps
        if num_inference_steps not in (None, n):
            raise ValueError(f"ResShift samples all {n} steps of its chain; num_inference_steps={num_inference_steps}")
        self.timesteps = torch.arange(n - 1, -1, -1, device=device)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor, y: Tensor) -> Tensor:
        """x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise, per sample."""
        eta = _per_sample(self.etas, timesteps, original_samples)
        sqrt_eta = _per_sample(self.sqrt_etas, timesteps, original_samples)
        return original_samples + eta * (y - original_samples) + self.config.kappa * sqrt_eta * noise

    def prior_sample(self, y: Tensor, noise: Tensor) -> Tensor:
        """x_T = y + kappa sqrt(eta_T) noise."""
        return y + self.config.kappa * float(self.sqrt_etas[-1]) * noise

    def scale_model_input(self, sample: Tensor, timestep: Tensor | int) -> Tensor:
        """What the denoiser sees: x_t / sqrt(kappa^2 eta_t + 1)."""
        eta = _per_sample(self.etas, timestep, sample)
        return sample / torch.sqrt(self.config.kappa**2 * eta + 1.0)

    def step(self, model_output: Tensor, timestep: Tensor | int, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """Ancestral step: posterior mean from x0_hat = model_output, plus posterior noise except at index 0."""
        mean = (_per_sample(self.posterior_mean_coef_xt, timestep, sample) * sample
                + _per_sample(self.posterior_mean_coef_x0, timestep, sample) * model_output)
        std = _per_sample(self.posterior_variance, timestep, sample).sqrt()
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev = mean + std * noise  # std is 0 at index 0
        if not return_dict:
            return (prev,)
        return ResShiftSchedulerOutput(prev_sample=prev, pred_original_sample=model_output)

    def deterministic_step(self, model_output: Tensor, timestep: Tensor | int, sample: Tensor, y: Tensor) -> Tensor:
        """SinSR's noise-free step: x_{t-1} = x0_hat + eta_{t-1} (y - x0_hat) + kappa sqrt(eta_{t-1}) eps_hat, with
        eps_hat the noise implied by x_t and x0_hat."""
        return (_per_sample(self.ddim_k, timestep, sample) * model_output
                + _per_sample(self.ddim_m, timestep, sample) * sample
                + _per_sample(self.ddim_j, timestep, sample) * y)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class ResShiftTeacher(Teacher):
    """ResShift teacher in pixel space: an x0-predicting `SR3UNet` on [scaled x_t, y] + `ResShiftScheduler`."""

    @classmethod
    def build(cls, scale: int = 4, scheduler_config: dict | None = None, **unet_config) -> "ResShiftTeacher":
        return cls(SR3UNet(**unet_config), ResShiftScheduler(**(scheduler_config or {})), scale=scale)

    def training_loss(self, hr: Tensor, cond: Tensor, generator: torch.Generator | None = None,
                      denoiser: nn.Module | None = None) -> Tensor:
        """MSE between predicted and true x0 at one random step per sample (images mapped to [-1, 1])."""
        denoiser = denoiser or self.unet
        x0, y = hr * 2 - 1, cond * 2 - 1
        t = torch.randint(0, len(self.scheduler), (hr.shape[0],), device=hr.device, generator=generator)
        noise = randn_tensor(hr.shape, generator=generator, device=hr.device, dtype=hr.dtype)
        x_t = self.scheduler.add_noise(x0, noise, t, y)
        pred = denoiser(self.scheduler.scale_model_input(x_t, t), y, t)
        return F.mse_loss(pred.float(), x0.float())

    @torch.no_grad()
    def sample(self, cond: Tensor, num_inference_steps: int | None = None, generator: torch.Generator | None = None,
               noise: Tensor | None = None, deterministic: bool = False) -> Tensor:
        """Super-resolve `cond` = bicubic(LR) in [0, 1] -> [0, 1]. `deterministic=True` is SinSR's sampler F(x_T, y):
        the same `noise` always gives the same output."""
        h, w = cond.shape[-2:]
        y = pad_to_multiple(cond, self.unet.size_multiple) * 2 - 1
        noise = noise if noise is not None else randn_tensor(y.shape, generator=generator, device=y.device,
                                                             dtype=y.dtype)
        if noise.shape != y.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected the padded condition's {tuple(y.shape)}")
        self.scheduler.set_timesteps(num_inference_steps, device=y.device)
        x = self.scheduler.prior_sample(y, noise)
        for t in self.scheduler.timesteps:
            x0_hat = self.predict(self.scheduler.scale_model_input(x, t), y, t).clamp(-1.0, 1.0)
            if deterministic:
                x = self.scheduler.deterministic_step(x0_hat, t, x, y)
            else:
                x = self.scheduler.step(x0_hat, t, x, generator=generator).prev_sample
        return ((x[:, :, :h, :w] + 1) / 2).clamp(0.0, 1.0)
