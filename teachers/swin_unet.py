"""ResShift's released denoiser, "UNetModelSwin" (zsyOAOA/ResShift `models/unet.py`, `models/swin_transformer.py`),
written with the released parameter names so a released state dict loads strictly and completely.

A guided-diffusion UNet on VQGAN-f4 latents: ResBlocks with scale-shift (FiLM) time conditioning, conv down- and
nearest+conv up-sampling, and a Swin layer (patch embed 1x1 -> `swin_depth` window-attention blocks, every second
one shifted by half a window -> 1x1 patch unembed) after the first ResBlock of each level listed in
`attention_resolutions`, on both sides and in the middle. The LR image (in [-1, 1], at the latent size) is
concatenated to the latent along channels; the time input is the step index, embedded sinusoidally (cosine half
first). The real-SR x4 teacher's configuration (`configs/realsr_swinunet_realesrgan256.yaml`) is the default:
118,593,583 parameters (`../shared/spec/resshift.md` section 6).

The denoiser call is the project's: `forward(x, y, t, return_features=False)`, `y` the LR condition; features are the
ResBlock-level outputs by name ("down.{level}.{block}", "mid.0", "up.{level}.{block}", level 0 the finest).
Persistent buffers of the released file (each window attention's `relative_position_index`, each shifted block's
`attn_mask` at `image_size`) are kept under their names; other input sizes compute their mask on the fly.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from students.shapes import per_sample_timesteps


class GroupNorm32(nn.GroupNorm):
    """Group norm over 32 groups computed in float32 (as the released code, whatever the input dtype)."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


class ResBlock(nn.Module):
    """in_layers (norm, SiLU, conv) -> FiLM from the time embedding -> out_layers (norm, SiLU, dropout, conv), plus
    the input through `skip_connection` (identity or 1x1 conv)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 scale_shift: bool = True):
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def relative_position_index(window: int) -> Tensor:
    """(window^2, window^2) index into the (2 window - 1)^2 relative-position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def partition(x: Tensor, window: int) -> Tensor:
    """(B, C, H, W) -> (B, nW, window^2, C), windows in row-major order."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // window) * (w // window), window * window, c)


def merge(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of `partition`: (B, nW, window^2, C) -> (B, C, H, W)."""
    b, _, _, c = windows.shape
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> Tensor:
    """(nW, window^2, window^2) additive mask of a shifted block, as the released code computes it (-100 between
    tokens of different labels, 0 elsewhere).

    Not the 2-D region mask of the Swin paper: the released `calculate_mask` (models/swin_transformer.py) indexes an
    (1, 1, H, W) map as if it were (1, H, W, 1), so only the row bands [0, H - window), [H - window, H - shift),
    [H - shift, H) get labels, and it flattens each window column-major while the tokens are row-major. Token (r, c)
    of window (i, j) therefore carries the band of row i * window + c. The released weights were trained with this
    mask (it is also stored in the checkpoint), so it is reproduced here.
    """
    band = torch.zeros(h, dtype=torch.long)
    band[h - window : h - shift] = 1
    band[h - shift :] = 2
    nh, nw = h // window, w // window
    by_column = band[torch.arange(nh)[:, None] * window + torch.arange(window)[None, :]]  # (nh, window): label of c
    labels = by_column[:, None, None, :].expand(nh, nw, window, window).reshape(nh * nw, window * window)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.where(different, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window, self.heads = window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, nW, N, C), mask (nW, N, N) or None -> (B, nW, N, C)."""
        b, nw, n, c = x.shape
        q, k, v = self.qkv(x).view(b, nw, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        bias = bias.permute(2, 0, 1).to(x.dtype)  # (heads, N, N)
        if mask is not None:
            bias = bias + mask[:, None].to(x.dtype)  # (nW, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nW, heads, N, C / heads)
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        if resolution <= window:  # the released rule: one window covers the map, no shift
            window, shift = resolution, 0
        self.window, self.shift, self.resolution = window, shift, resolution
        self.norm1 = GroupNorm32(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = GroupNorm32(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shifted_window_mask(resolution, resolution, window, shift) if shift else None)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        if h % self.window or w % self.window:
            raise ValueError(f"Swin block: a {h}x{w} map is not a multiple of its window {self.window}")
        mask = None
        if self.shift:
            mask = self.attn_mask if (h, w) == (self.resolution,) * 2 else shifted_window_mask(h, w, self.window,
                                                                                                self.shift).to(x.device)
        shifted = self.norm1(x)
        if self.shift:
            shifted = torch.roll(shifted, (-self.shift, -self.shift), dims=(2, 3))
        attended = merge(self.attn(partition(shifted, self.window), mask), self.window, h, w)
        if self.shift:
            attended = torch.roll(attended, (self.shift, self.shift), dims=(2, 3))
        x = x + attended
        return x + self.mlp(self.norm2(x))


class PatchProjection(nn.Module):
    """The released PatchEmbed / PatchUnEmbed with patch size 1 and no norm: a 1x1 conv named `proj`."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class BasicLayer(nn.Module):
    """The released Swin layer: 1x1 in, `depth` blocks (odd ones shifted by half a window), 1x1 out."""

    def __init__(self, channels: int, embed_dim: int, heads: int, window: int, depth: int, resolution: int,
                 mlp_ratio: float):
        super().__init__()
        self.patch_embed = PatchProjection(channels, embed_dim)
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(embed_dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)])
        self.patch_unembed = PatchProjection(embed_dim, channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.patch_unembed(x)


class TimestepSequential(nn.Sequential):
    """A released `TimestepEmbedSequential`: ResBlocks get the time embedding, the other layers only x."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class SwinUNet(ModelMixin, ConfigMixin):
    """UNetModelSwin; `forward(x, y, t, return_features=False)` with x the scaled latent x_t / sqrt(kappa^2 eta_t +
    1), y the LR image in [-1, 1] at the latent size and t the step index per sample; predicts x0 (a latent)."""

    @register_to_config
    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        model_channels: int = 160,
        out_channels: int = 3,
        num_res_blocks: tuple[int, ...] = (2, 2, 2, 2),
        attention_resolutions: tuple[int, ...] = (64, 32, 16, 8),
        dropout: float = 0.0,
        channel_mult: tuple[int, ...] = (1, 2, 2, 4),
        conv_resample: bool = True,
        num_heads: int = -1,
        num_head_channels: int = 32,
        use_scale_shift_norm: bool = True,
        swin_depth: int = 2,
        swin_embed_dim: int = 192,
        window_size: int = 8,
        mlp_ratio: float = 4.0,
        cond_lq: bool = True,
        lq_size: int = 64,
    ):
        super().__init__()
        if isinstance(num_res_blocks, int):
            num_res_blocks = (num_res_blocks,) * len(channel_mult)
        if len(num_res_blocks) != len(channel_mult):
            raise ValueError(f"SwinUNet: num_res_blocks={list(num_res_blocks)} needs one entry per channel_mult level "
                             f"({len(channel_mult)})")
        if not conv_resample:
            raise ValueError("SwinUNet: conv_resample=False (pooling / plain upsampling) is not supported")
        if lq_size != image_size or not cond_lq:
            raise ValueError(f"SwinUNet: the LR condition must be concatenated at the latent size (cond_lq=True, "
                             f"lq_size == image_size); got cond_lq={cond_lq}, lq_size={lq_size}, "
                             f"image_size={image_size}")
        if num_head_channels > 0:
            if swin_embed_dim % num_head_channels:
                raise ValueError(f"SwinUNet: swin_embed_dim={swin_embed_dim} is not a multiple of "
                                 f"num_head_channels={num_head_channels}")
            heads = swin_embed_dim // num_head_channels
        elif num_heads > 0:
            heads = num_heads
        else:
            raise ValueError("SwinUNet: set num_head_channels > 0 or num_heads > 0")

        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.feature_extractor = nn.Identity()

        def swin(channels: int, resolution: int) -> BasicLayer:
            return BasicLayer(channels, swin_embed_dim, heads, window_size, swin_depth, resolution, mlp_ratio)

        ch = model_channels * channel_mult[0]
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels + 3, ch, 3, padding=1))])
        skips, names = [ch], ["stem"]
        ds = image_size
        for level, mult in enumerate(channel_mult):
            for block in range(num_res_blocks[level]):
                layers = [ResBlock(ch, emb_dim, dropout, model_channels * mult, use_scale_shift_norm)]
                ch = model_channels * mult
                if ds in attention_resolutions and block == 0:
                    layers.append(swin(ch, ds))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(ch)
                names.append(f"down.{level}.{block}")
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skips.append(ch)
                names.append(f"downsample.{level}")
                ds //= 2
        self.middle_block = TimestepSequential(ResBlock(ch, emb_dim, dropout, scale_shift=use_scale_shift_norm),
                                               swin(ch, ds),
                                               ResBlock(ch, emb_dim, dropout, scale_shift=use_scale_shift_norm))
        self.output_blocks = nn.ModuleList()
        self._up_names = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for block in range(num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skips.pop(), emb_dim, dropout, model_channels * mult, use_scale_shift_norm)]
                ch = model_channels * mult
                if ds in attention_resolutions and block == 0:
                    layers.append(swin(ch, ds))
                if level and block == num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    ds *= 2
                self.output_blocks.append(TimestepSequential(*layers))
                self._up_names.append(f"up.{level}.{block}")
        self._down_names = names
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(model_channels * channel_mult[0], out_channels,
                                                                         3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    @property
    def size_multiple(self) -> int:
        """Latent sizes must divide into windows at the coarsest level."""
        c = self.config
        return c.window_size * 2 ** (len(c.channel_mult) - 1)

    def forward(self, x: Tensor, y: Tensor, t: Tensor, return_features: bool = False):
        if x.shape[-2:] != y.shape[-2:]:
            raise ValueError(f"SwinUNet: the latent {tuple(x.shape[-2:])} and the LR condition {tuple(y.shape[-2:])} "
                             "must have the same size")
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"SwinUNet: latent size {tuple(x.shape[-2:])} must be a multiple of {self.size_multiple}")
        t = per_sample_timesteps(t, x.shape[0], x.device)
        emb = self.time_embed(get_timestep_embedding(t, self.config.model_channels, flip_sin_to_cos=True,
                                                     downscale_freq_shift=0).to(x.dtype))
        h = torch.cat([x, self.feature_extractor(y.to(x.dtype))], dim=1)
        skips, features = [], {}
        for name, module in zip(self._down_names, self.input_blocks):
            h = module(h, emb)
            skips.append(h)
            if name.startswith("down."):
                features[name] = h
        h = self.middle_block(h, emb)
        features["mid.0"] = h
        for name, module in zip(self._up_names, self.output_blocks):
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
            features[name] = h
        out = self.out(h)
        return (out, features) if return_features else out


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def released_config_parameter_count() -> int:
    """Parameters of the released real-SR x4 configuration, counted on the meta device (no memory)."""
    with torch.device("meta"):
        return parameter_count(SwinUNet())


__all__ = ["SwinUNet", "released_config_parameter_count"]
