"""SR3: the full-precision conditional DDPM teacher (the "SR3" row of BI-DiffSR's Table 2).

The denoiser is diffusers' `UNet2DModel` on [cond, x_t] with the SR3 layout (Janspiry/Image-Super-Resolution-via-
Iterative-Refinement): base 64, multipliers 1-2-4-8, 2 res blocks, middle self-attention with one head and a
bias-free qkv projection, and SR3's time MLP (64 -> 256 -> 64, sine half first), which gives exactly 55,407,235
parameters and 176.41G OPs at 3x256x256. The process is the one BI-DiffSR trains with: diffusers' DDPM schedule
(T = 2000, linear betas 1e-6 .. 1e-2, epsilon prediction, L1 loss) and 50-step DDIM sampling (eta 0, x0 clipped to
[-1, 1]). Images and conditions live in [0, 1]; timesteps are drawn per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from teachers.base import Teacher, pad_to_multiple, per_sample_timesteps


class SR3UNet(ModelMixin, ConfigMixin):
    """SR3's denoiser on diffusers' UNet2DModel: `forward(x_t, cond, t, return_features=False)`."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        dropout: float = 0.2,
        norm_groups: int = 16,
    ):
        super().__init__()
        widths = [base_channels * m for m in channel_mults]
        bad = [w for w in widths if w % norm_groups]
        if bad:
            raise ValueError(f"SR3UNet config: norm_groups={norm_groups} must divide every level width; {bad[0]} is not a multiple")
        self.unet = UNet2DModel(
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=tuple(widths),
            layers_per_block=num_res_blocks,
            down_block_types=("DownBlock2D",) * len(widths),
            up_block_types=("UpBlock2D",) * len(widths),
            norm_num_groups=norm_groups,
            attention_head_dim=widths[-1],  # one head, as SR3
            time_embedding_dim=base_channels,  # res blocks project a 64-d embedding, as SR3
            flip_sin_to_cos=False,
            freq_shift=0,
            dropout=dropout,
        )
        # SR3's time MLP widens to 4C and comes back to C; its attention qkv projection has no bias.
        self.unet.time_embedding = TimestepEmbedding(base_channels, 4 * base_channels, out_dim=base_channels)
        attention = self.unet.mid_block.attentions[0]
        for name in ("to_q", "to_k", "to_v"):
            setattr(attention, name, nn.Linear(widths[-1], widths[-1], bias=False))

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.config.channel_mults) - 1)

    def feature_taps(self) -> dict[str, nn.Module]:
        """Modules whose outputs are the named features (same names and shapes as the BI-DiffSR student's)."""
        unet, last = self.unet, len(self.unet.down_blocks) - 1
        taps = {f"down.{i}.{j}": r for i, block in enumerate(unet.down_blocks) for j, r in enumerate(block.resnets)}
        taps["mid.0"] = unet.mid_block.attentions[0]
        taps["mid.1"] = unet.mid_block.resnets[1]
        for k, block in enumerate(unet.up_blocks):
            taps.update({f"up.{last - k}.{j}": r for j, r in enumerate(block.resnets)})
        return taps

    def forward(self, x_t: Tensor, cond: Tensor, t: Tensor, return_features: bool = False):
        b, _, h, w = x_t.shape
        t = per_sample_timesteps(t, b, x_t.device)
        x = pad_to_multiple(torch.cat([cond, x_t], dim=1), self.size_multiple)
        if not return_features:
            return self.unet(x, t).sample[:, :, :h, :w]
        features: dict[str, Tensor] = {}
        handles = [
            module.register_forward_hook(lambda m, i, o, name=name: features.__setitem__(name, o))
            for name, module in self.feature_taps().items()
        ]
        try:
            out = self.unet(x, t).sample[:, :, :h, :w]
        finally:
            for handle in handles:
                handle.remove()
        return out, features


def sr3_scheduler(num_train_timesteps: int = 2000) -> DDPMScheduler:
    """The training process of BI-DiffSR and its SR3 teacher: linear betas 1e-6 .. 1e-2 over T steps, epsilon."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=1e-6,
        beta_end=1e-2,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
    )


class SR3Teacher(Teacher):
    """SR3 teacher: `SR3UNet` + DDPM process; samples with DDIM."""

    @classmethod
    def build(cls, scale: int = 4, num_train_timesteps: int = 2000, **unet_config) -> "SR3Teacher":
        """A fresh, trainable teacher (random weights) from an SR3UNet config."""
        return cls(SR3UNet(**unet_config), sr3_scheduler(num_train_timesteps), scale=scale)

    def training_loss(self, hr: Tensor, cond: Tensor, generator: torch.Generator | None = None,
                      denoiser: nn.Module | None = None) -> Tensor:
        """L1 between predicted and true noise at one random timestep per sample."""
        denoiser = denoiser or self.unet
        b = hr.shape[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), device=hr.device, generator=generator)
        noise = randn_tensor(hr.shape, generator=generator, device=hr.device, dtype=hr.dtype)
        x_t = self.scheduler.add_noise(hr, noise, t)
        return F.l1_loss(denoiser(x_t, cond, t).float(), noise.float())

    def ddim_scheduler(self, num_inference_steps: int) -> DDIMScheduler:
        return ddim_scheduler(self.scheduler.config, num_inference_steps, self.unet.device)

    @torch.no_grad()
    def sample(self, cond: Tensor, num_inference_steps: int = 50, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
        """Super-resolve a batch: `cond` = bicubic(LR) in [0, 1] -> SR images in [0, 1]. Deterministic DDIM (eta 0)
        from `noise` (or noise drawn with `generator`) at the padded size."""
        return ddim_sample(self.predict, self.scheduler.config, cond, num_inference_steps, self.unet.size_multiple,
                           generator=generator, noise=noise)


def ddim_scheduler(process_config, num_inference_steps: int, device=None) -> DDIMScheduler:
    """BI-DiffSR's sampler for a DDPM process: DDIM, "leading" spacing, eta 0, final alpha_bar_prev = 1."""
    scheduler = DDIMScheduler.from_config(process_config, set_alpha_to_one=True, steps_offset=0,
                                          timestep_spacing="leading")
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler


@torch.no_grad()
def ddim_sample(predict_noise, process_config, cond: Tensor, num_inference_steps: int, size_multiple: int,
                generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    """The sampling loop every eps-predicting denoiser (SR3 teacher, BI-DiffSR student) shares: reflect-pad the
    condition, start from N(0, I) at the padded size, run DDIM, crop, clamp to [0, 1].
    `predict_noise(x_t, cond, t)` is the denoiser call."""
    h, w = cond.shape[-2:]
    cond = pad_to_multiple(cond, size_multiple)
    x = noise if noise is not None else randn_tensor(cond.shape, generator=generator, device=cond.device,
                                                     dtype=cond.dtype)
    if x.shape != cond.shape:
        raise ValueError(f"noise has shape {tuple(x.shape)}, expected the padded condition's {tuple(cond.shape)}")
    scheduler = ddim_scheduler(process_config, num_inference_steps, cond.device)
    for t in scheduler.timesteps:
        eps = predict_noise(x, cond, t)
        x = scheduler.step(eps.to(x.dtype), t, x, eta=0.0).prev_sample
    return x[:, :, :h, :w].clamp(0.0, 1.0)
