"""ResShift: residual-shifting diffusion ("ResShift: Efficient Diffusion Model for Image Super-resolution by Residual
Shifting"; zsyOAOA/ResShift) as a diffusion process.

The Markov chain shifts the residual e0 = y - x0 from the HR image x0 to the upsampled LR y in T (~15) steps:
    x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps,    x_T ~ y + kappa sqrt(eta_T) eps,
with sqrt(eta_t) growing geometrically (in a power-warped index) from min_noise_level / kappa to etas_end. The
denoiser predicts x0 from x_t / sqrt(kappa^2 eta_t + 1), y and the step index t in [0, T - 1]; its loss is the MSE
to x0. `prediction_type="residual"` reads the output as x0 - y (x0 = y + output), a switch of ours: at quickstart
sizes it removed a colour shift of the plain x0 prediction. Samplers: the official ancestral one (stochastic, the
default) and SinSR's deterministic one, whose output from a fixed x_T is the one-step distillation target.

This process runs in pixel space on [-1, 1] images (`encode` maps [0, 1] there) and clips x0 to [-1, 1] while
sampling; the released models run on VQGAN-f4 latents: `teachers.latent_resshift.LatentResShiftProcess`, the same
chain with the autoencoder in `encode`/`decode`, no clip, and a condition y that also carries the LR image for the
denoiser (the chain itself only sees `chain_end(y)`).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  diffusers finds loaders by this name
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from teachers.process import DiffusionProcess, check_prediction_type, per_sample


class ResShiftProcess(DiffusionProcess):
    """The ResShift process: eta schedule, forward noising, input scaling, ancestral and deterministic steps.

    Index convention as the official code: i = 0 .. T-1, i = 0 least noisy; "eta_{t-1}" of step i is eta[i-1]
    (0 for i = 0).
    """

    name = "resshift"
    prediction_types = ("sample", "residual")
    default_deterministic = False  # the official sampler is ancestral

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 15,
        kappa: float = 2.0,
        power: float = 0.3,
        min_noise_level: float = 0.04,
        etas_end: float = 0.99,
        prediction_type: str = "sample",
        loss: str = "mse",
        clip_sample: str = "data",
        one_step: bool = False,
    ):
        if num_train_timesteps < 2:
            raise ValueError(f"ResShiftProcess: num_train_timesteps={num_train_timesteps} must be at least 2")
        if kappa <= 0 or not 0 < min_noise_level < 1 or not 0 < etas_end < 1:
            raise ValueError("ResShiftProcess: kappa must be > 0 and min_noise_level, etas_end in (0, 1); got "
                             f"kappa={kappa}, min_noise_level={min_noise_level}, etas_end={etas_end}")
        check_prediction_type(self, prediction_type)
        if loss not in ("mse", "l1"):
            raise ValueError(f"ResShiftProcess: loss={loss!r} is not one of ('mse', 'l1')")
        if clip_sample not in ("data", "none"):
            raise ValueError(f"ResShiftProcess: clip_sample={clip_sample!r} is not one of ('data', 'none')")
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

    @property
    def clip_range(self):
        return (-1.0, 1.0) if self.config.clip_sample == "data" else None

    def encode(self, image: Tensor) -> Tensor:
        return image * 2 - 1

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0.0, 1.0)

    def chain_end(self, y: Tensor) -> Tensor:
        """The state the chain shifts x0 towards (the encoded upsampled LR): y itself in pixel space."""
        return y

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise, per sample."""
        y = self.chain_end(y)
        eta = per_sample(self.etas, t, x0)
        sqrt_eta = per_sample(self.sqrt_etas, t, x0)
        return x0 + eta * (y - x0) + self.config.kappa * sqrt_eta * noise

    def model_input(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """What the denoiser sees: x_t / sqrt(kappa^2 eta_t + 1)."""
        eta = per_sample(self.etas, t, x_t)
        return x_t / torch.sqrt(self.config.kappa**2 * eta + 1.0)

    def target(self, x0: Tensor, noise: Tensor, y: Tensor) -> Tensor:
        return x0 - self.chain_end(y) if self.config.prediction_type == "residual" else x0

    def predict_x0(self, output: Tensor, x_t: Tensor, t, y: Tensor, clip: bool = True) -> Tensor:
        x0 = self.chain_end(y) + output if self.config.prediction_type == "residual" else output
        return x0.clamp(*self.clip_range) if clip and self.clip_range else x0

    @property
    def default_inference_steps(self) -> int:
        return self.num_train_timesteps

    def inference_timesteps(self, num_inference_steps: int | None) -> list[int]:
        """ResShift samples every step of its short chain: T-1, ..., 0."""
        n = self.num_train_timesteps
        if num_inference_steps not in (None, n):
            raise ValueError(f"ResShift samples all {n} steps of its chain; num_inference_steps="
                             f"{num_inference_steps} (leave it unset)")
        return list(range(n - 1, -1, -1))

    def prior(self, y: Tensor, noise: Tensor) -> Tensor:
        """x_T = y + kappa sqrt(eta_T) noise."""
        return self.chain_end(y) + self.config.kappa * float(self.sqrt_etas[-1]) * noise

    def step(self, output: Tensor, t: int, t_prev: int, x_t: Tensor, y: Tensor, deterministic: bool = True,
             generator: torch.Generator | None = None) -> Tensor:
        """Stochastic: the ancestral posterior step (no noise at index 0). Deterministic: SinSR's noise-free step
        x_{t-1} = x0_hat + eta_{t-1} (y - x0_hat) + kappa sqrt(eta_{t-1}) eps_hat, eps_hat implied by x_t, x0_hat."""
        x0 = self.predict_x0(output, x_t, t, y)
        if deterministic:
            return (per_sample(self.ddim_k, t, x_t) * x0 + per_sample(self.ddim_m, t, x_t) * x_t
                    + per_sample(self.ddim_j, t, x_t) * self.chain_end(y))
        mean = per_sample(self.posterior_mean_coef_xt, t, x_t) * x_t + per_sample(self.posterior_mean_coef_x0, t,
                                                                                     x_t) * x0
        std = per_sample(self.posterior_variance, t, x_t).sqrt()  # 0 at index 0
        return mean + std * randn_tensor(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)

    def one_step_variant(self) -> "ResShiftProcess":
        return self.derived(one_step=True)


