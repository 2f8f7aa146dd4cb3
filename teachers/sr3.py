"""SR3's denoiser: the full-precision UNet of the "SR3" row of BI-DiffSR's Table 2.

diffusers' `UNet2DModel` on [cond, x_t] with the SR3 layout (Janspiry/Image-Super-Resolution-via-Iterative-
Refinement): base 64, multipliers 1-2-4-8, 2 res blocks, middle self-attention with one head and a bias-free qkv
projection, and SR3's time MLP (64 -> 256 -> 64, sine half first), which gives exactly 55,407,235 parameters and
176.41G OPs at 3x256x256. It runs on any process (`teachers.ddpm.DDPMProcess`, BI-DiffSR's, for the SR3 teacher;
`teachers.resshift.ResShiftProcess` for a pixel-space ResShift teacher); its channels do not correspond to a
BI-DiffSR student's, so it teaches by outputs, never by features.

`attention_levels` adds self-attention after every res block of those levels and `time_act_in_blocks=False` drops
diffusers' SiLU before each block's time projection: with both, the network is the original SR3's (Janspiry's
`attn_res` layouts), which `python -m pipeline.importers sr3` builds for released checkpoints.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import Tensor, nn

from students.shapes import pad_to_multiple, per_sample_timesteps


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
        attention_levels: tuple[int, ...] = (),
        time_act_in_blocks: bool = True,
    ):
        super().__init__()
        widths = [base_channels * m for m in channel_mults]
        bad = [w for w in widths if w % norm_groups]
        if bad:
            raise ValueError(f"SR3UNet config: norm_groups={norm_groups} must divide every level width; {bad[0]} is "
                             "not a multiple")
        levels = set(attention_levels)
        if not levels <= set(range(len(widths))):
            raise ValueError(f"SR3UNet config: attention_levels={tuple(attention_levels)} must be level indices "
                             f"0..{len(widths) - 1} (0 the finest)")
        self.unet = UNet2DModel(
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=tuple(widths),
            layers_per_block=num_res_blocks,
            down_block_types=tuple("AttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(len(widths))),
            up_block_types=tuple("AttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(len(widths)))),
            norm_num_groups=norm_groups,
            attention_head_dim=None,  # one head per attention, as SR3
            time_embedding_dim=base_channels,  # res blocks project a 64-d embedding, as SR3
            flip_sin_to_cos=False,
            freq_shift=0,
            dropout=dropout,
        )
        # SR3's time MLP widens to 4C and comes back to C; its attention qkv projections have no bias.
        self.unet.time_embedding = TimestepEmbedding(base_channels, 4 * base_channels, out_dim=base_channels)
        for attention in self.unet.modules():
            if isinstance(attention, Attention):
                width = attention.to_q.in_features
                for name in ("to_q", "to_k", "to_v"):
                    setattr(attention, name, nn.Linear(width, width, bias=False))
        if not time_act_in_blocks:  # the original SR3 projects the time embedding without a SiLU first
            for block in self.unet.modules():
                if isinstance(block, ResnetBlock2D):
                    block.skip_time_act = True

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
