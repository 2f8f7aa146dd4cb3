"""BI-DiffSR: the binarized noise-estimation UNet of "Binarized Diffusion Model for Image Super-Resolution".

Layer for layer the official network (zhengchen1999/BI-DiffSR, `unet_BI_DiffSR_arch.py`): BI-Conv blocks with
TaR/TaA, CP-Down / CP-Up, CS-Fusion skips, full-precision first/last conv, time MLP, middle attention and the
decoder levels whose nominal resolution is in `fp_resolutions`. Two deliberate differences: the TaR/TaA group is
chosen per sample (the official code uses the first sample's timestep for the whole batch), and inputs of any size
are reflect-padded to a multiple of 2^(levels - 1) and cropped back.

Ablation switches of the paper's Table 1: `identity_shortcut`, `downsample`/`upsample` ("cp" or plain binarized
"conv"), `fusion` ("csf", "split", "concat", "add"), `timestep_aware_shift` / `timestep_aware_activation` (TaR/TaA)
and `timestep_groups` (K, the number of pairs). `binarizer` swaps in the Table 2 baselines and the layers of BiDM and
BiMaCoSR; `cross_timestep_blocks` is BiDM's cross-timestep feature connection (the other half of its Timestep-friendly
Binary Structure): the last N decoder blocks mix in, per sample, the same blocks' outputs from one step noisier,
out = (1 - c) out + c cache (cache detached), with a learnable c per timestep bin and block (0.3 at start;
Xingyu-Zheng/BiDM openaimodel_ours.py). The cache is a pass at t + 1 from the same noise while training
(`teachers.process.denoise_batch`) and the previous sampling step's outputs while sampling.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from students.binarizers import get_binarizer
from students.binary import BinarizedWeight, BinaryConv2d, BinaryLinear, FPConv2d
from students.checksums import CHECKSUMS, damage  # publishing writes them; the model only checks them
from students.packed_conv import PackedKernelsUnavailable
from students.shapes import pad_to_multiple, per_sample_timesteps
from students.timestep import timestep_group

ConvBuilder = Callable[..., nn.Module]
LinearBuilder = Callable[[int, int, bool], nn.Module]

DOWNSAMPLE_CHOICES = ("cp", "conv")
UPSAMPLE_CHOICES = ("cp", "conv")
FUSION_CHOICES = ("csf", "split", "concat", "add")
CROSS_TIMESTEP_INIT = 0.3  # BiDM's starting mixing coefficient (LDM code; its CIFAR variant starts at 0)
CROSS_TIMESTEP_MAX_BINS = 100
# Config keys that fix the feature layout: a teacher whose features SPD may compare with a student's agrees on all.
LAYOUT_KEYS = ("in_channels", "out_channels", "base_channels", "channel_mults", "num_res_blocks", "norm_groups",
               "image_size", "fp_resolutions", "downsample", "upsample", "fusion", "identity_shortcut",
               "middle_attention")


class ResBlock(nn.Module):
    """GN -> Swish -> conv3x3, + Linear(Swish(t_emb)), GN -> Swish -> Dropout -> conv3x3, + x (identity shortcut)."""

    def __init__(self, channels: int, temb_dim: int, conv: ConvBuilder, binary: bool, dropout: float, groups: int,
                 linear: LinearBuilder = lambda cin, cout, binary: nn.Linear(cin, cout)):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = conv(channels, channels, 3, binary)
        self.time_proj = linear(temb_dim, channels, binary)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(channels, channels, 3, binary)

    def forward(self, x: Tensor, temb: Tensor, group: Tensor | None) -> Tensor:
        # Swish in place on the norm's fresh output: one pass over memory less (autograd allows it: silu_ keeps
        # what its backward needs)
        h = self.conv1(F.silu(self.norm1(x), inplace=True), group, channel_add=self.time_proj(F.silu(temb)))
        return self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)), group, addend=x)


def inference_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """A 1x1 convolution of an inference form, on oneDNN's kernel wherever torch has it: torch itself runs 1x1 convs
    on a slower direct kernel when it has one thread and a batch under 16 (aten::_slow_conv2d_forward: 12.3 ms against
    3.7 ms at 64 x 256 x 256 on one core here); F.conv2d elsewhere. The same sums as F.conv2d with two threads."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available() \
            and torch.backends.mkldnn.enabled:
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, [0, 0], [1, 1], [1, 1], groups)
    return F.conv2d(x, weight, bias, groups=groups)


MATERIALISED_ATTENTION_MAX = 4096  # positions: a 64 MB float32 attention matrix, the most we let torch materialise


class SelfAttention(nn.Module):
    """Single-head full-precision self-attention over all positions (the middle block's)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)
        self.by_convs = False  # the inference form, once `merge_for_inference` ran

    def merge_for_inference(self) -> bool:
        """CPU inference without gradients computes the attention's two products as 1x1 convolutions
        (`attention_by_convs`) where the map is small enough to hold its attention matrix."""
        self.by_convs = True
        return True

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if self.by_convs and h * w <= MATERIALISED_ATTENTION_MAX and x.device.type == "cpu" \
                and not torch.is_grad_enabled():
            o = attention_by_convs(inference_conv1x1(self.norm(x), self.qkv.weight))
            return x + inference_conv1x1(o, self.out.weight, self.out.bias)
        qkv = self.qkv(self.norm(x))
        q, k, v = qkv.reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        if h * w > MATERIALISED_ATTENTION_MAX:
            # channels made contiguous: only then does torch pick its memory-efficient (flash) kernel on a CPU; the
            # strided views materialise the HW x HW matrix (17 GB at a 512-pixel tile of a 2-level student). Small
            # maps keep that path, whose summation order the golden trainings were recorded with
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.out(o.transpose(-1, -2).reshape(b, c, h, w))


def attention_by_convs(qkv: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(C)) v per sample, for qkv (B, 3C, H, W) (queries, keys, values stacked along channels),
    as (B, C, H, W): both products as 1x1 convolutions (one group per sample) on channels-last maps, the keys and the
    values as their weights. On a CPU that runs them on oneDNN's kernels: 6.1 ms against torch's attention's 11.3 ms
    at the paper's middle block (32 x 32 x 512) on a 2-core CPU, where torch's matrix products ran at half oneDNN's
    rate; the same sums in another order."""
    b, c3, h, w = qkv.shape
    c, hw = c3 // 3, h * w
    rows = qkv.permute(0, 2, 3, 1).reshape(b, hw, c3)  # (B, positions, 3C)
    # queries as one image of B * C channels (sample-major), keys (scaled) as B * HW filters of C channels
    queries = rows[..., :c].transpose(0, 1).reshape(1, h, w, b * c).permute(0, 3, 1, 2)
    keys = (rows[..., c:2 * c] * c ** -0.5).reshape(b * hw, c, 1, 1)
    scores = inference_conv1x1(queries.contiguous(memory_format=torch.channels_last), keys, groups=b)  # (1, B*HW, H, W)
    weights = scores.permute(0, 2, 3, 1).reshape(h, w, b, hw).softmax(-1)
    values = rows[..., 2 * c:].transpose(1, 2).reshape(b * c, hw, 1, 1).contiguous()
    o = inference_conv1x1(weights.reshape(1, h, w, b * hw).permute(0, 3, 1, 2), values, groups=b)  # (1, B * C, H, W)
    return o.permute(0, 2, 3, 1).reshape(h, w, b, c).permute(2, 3, 0, 1)


class CPDown(nn.Module):
    """Channel-preserving down: two convs on the channel halves, summed, then PixelUnshuffle(2): C -> 2C, H -> H/2."""

    def __init__(self, channels: int, conv: ConvBuilder):
        super().__init__()
        self.half = channels // 2
        self.conv_a = conv(self.half, self.half, 3, True)
        self.conv_b = conv(self.half, self.half, 3, True)

    def forward(self, x: Tensor, group: Tensor | None) -> Tensor:
        y = self.conv_b(x[:, self.half :], group, addend=self.conv_a(x[:, : self.half], group))
        return F.pixel_unshuffle(y, 2)


class CPUp(nn.Module):
    """Channel-preserving up: two convs on the same input, concatenated, then PixelShuffle(2): C -> C/2, H -> 2H."""

    def __init__(self, channels: int, conv: ConvBuilder):
        super().__init__()
        self.conv_a = conv(channels, channels, 3, True)
        self.conv_b = conv(channels, channels, 3, True)

    def forward(self, x: Tensor, group: Tensor | None) -> Tensor:
        return F.pixel_shuffle(torch.cat([self.conv_a(x, group), self.conv_b(x, group)], dim=1), 2)


class ConvDown(nn.Module):
    """Ablation baseline: one binarized 3x3 conv with stride 2, C -> C_out (no shortcut: shapes differ)."""

    def __init__(self, channels: int, out_channels: int, conv: ConvBuilder):
        super().__init__()
        self.conv = conv(channels, out_channels, 3, True, stride=2)

    def forward(self, x: Tensor, group: Tensor | None) -> Tensor:
        return self.conv(x, group)


class ConvUp(nn.Module):
    """Ablation baseline: nearest x2 upsampling, then one binarized 3x3 conv C -> C_out."""

    def __init__(self, channels: int, out_channels: int, conv: ConvBuilder):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = conv(channels, out_channels, 3, True)

    def forward(self, x: Tensor, group: Tensor | None) -> Tensor:
        return self.conv(self.upsample(x), group)


class SplitFusion(nn.Module):
    """Fuses concat(dec, skip) (2C) to C with two 1x1 convs summed. With `shuffle` this is CS-Fusion: branch 1 sees
    the odd decoder channels then the even skip channels, branch 2 the even decoder then the odd skip channels;
    without it each branch sees one half as it is (the "split" ablation)."""

    def __init__(self, channels: int, conv: ConvBuilder, binary: bool, shuffle: bool):
        super().__init__()
        self.shuffle = shuffle
        self.conv_a = conv(channels, channels, 1, binary)
        self.conv_b = conv(channels, channels, 1, binary)
        self.merged = None  # (W_dec, W_skip, bias) once `merge_for_inference` ran

    @torch.no_grad()
    def merge_for_inference(self) -> bool:
        """Full-precision branches become one 1x1 conv of dec plus one of skip, added in place, with the channel
        shuffle folded into their weights: no concatenations of strided channel slices (the same sums, in another
        order). False, and nothing changed, for binarized branches. Call it after the weights are final."""
        if not (type(self.conv_a) is FPConv2d and type(self.conv_b) is FPConv2d):
            return False
        w_a, w_b = self.conv_a.weight, self.conv_b.weight
        if self.shuffle:  # conv_a reads (dec odd, skip even), conv_b (dec even, skip odd)
            half = w_a.shape[1] // 2
            w_dec, w_skip = torch.empty_like(w_a), torch.empty_like(w_a)
            w_dec[:, 1::2], w_dec[:, 0::2] = w_a[:, :half], w_b[:, :half]
            w_skip[:, 0::2], w_skip[:, 1::2] = w_a[:, half:], w_b[:, half:]
        else:
            w_dec, w_skip = w_a, w_b
        self.merged = (w_dec.clone(), w_skip.clone(), self.conv_a.bias + self.conv_b.bias)
        return True

    def forward(self, dec: Tensor, skip: Tensor, group: Tensor | None) -> Tensor:
        if self.merged is not None:
            w_dec, w_skip, bias = self.merged
            out = inference_conv1x1(skip, w_skip, bias)
            return out.add_(inference_conv1x1(dec, w_dec))
        if self.shuffle:
            f1 = torch.cat([dec[:, 1::2], skip[:, 0::2]], dim=1)
            f2 = torch.cat([dec[:, 0::2], skip[:, 1::2]], dim=1)
        else:
            f1, f2 = dec, skip
        return self.conv_b(f2, group, addend=self.conv_a(f1, group))


class ConcatFusion(nn.Module):
    """Ablation baseline: one 1x1 conv on concat(dec, skip), 2C -> C (no shortcut: shapes differ)."""

    def __init__(self, channels: int, conv: ConvBuilder, binary: bool):
        super().__init__()
        self.conv = conv(2 * channels, channels, 1, binary)

    def forward(self, dec: Tensor, skip: Tensor, group: Tensor | None) -> Tensor:
        return self.conv(torch.cat([dec, skip], dim=1), group)


class AddFusion(nn.Module):
    """Ablation baseline: dec + skip, no parameters."""

    def forward(self, dec: Tensor, skip: Tensor, group: Tensor | None) -> Tensor:
        return dec + skip


class EncoderLevel(nn.Module):
    def __init__(self, blocks: list[ResBlock], down: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.down = down


class DecoderLevel(nn.Module):
    def __init__(self, fusions: list[nn.Module], blocks: list[ResBlock], up: nn.Module | None, full_precision: bool):
        super().__init__()
        self.fusions = nn.ModuleList(fusions)
        self.blocks = nn.ModuleList(blocks)
        self.up = up
        self.full_precision = full_precision


def layout_difference(student_config, teacher_config) -> tuple[str, object, object] | None:
    """The first LAYOUT_KEYS entry on which two BiDiffSRUNet configs (objects or saved dicts) differ, as
    (key, student value, teacher value), lists and tuples alike; None when the layouts agree."""
    def value(config, key):
        v = config.get(key)
        return list(v) if isinstance(v, (list, tuple)) else v

    for key in LAYOUT_KEYS:
        mine, theirs = value(student_config, key), value(teacher_config, key)
        if mine != theirs:
            return key, mine, theirs
    return None


def _config_error(field: str, value, why: str) -> ValueError:
    return ValueError(f"BiDiffSRUNet config: {field}={value!r} {why}")


class BiDiffSRUNet(ModelMixin, ConfigMixin):
    """The BI-DiffSR denoiser: `forward(x_t, cond, t)`, input concat [cond, x_t]. What the output means (noise, x0,
    a residual) is its diffusion process's business (`teachers.process`).

    Defaults are the official x2/x4 configuration (51,280,387 parameters; 4.58M / 36.67G by the paper's rule).
    `binarizer="none"` gives the full-precision twin: the same modules and parameter names, binarization off.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "BiDiffSRUNet":
        """diffusers' loading, after checking the weights against the checksums of the published folder when the
        path is one's `unet/` (diffusers' generic `DiffusionPipeline.from_pretrained` loads it through here)."""
        path = Path(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        if path.is_dir() and (path.parent / CHECKSUMS).is_file():
            why = damage(path.parent, prefix=f"{path.name}/")
            if why:
                raise ValueError(f"the model in {path} is damaged: {why}; download or publish it again")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

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
        image_size: int = 256,
        fp_resolutions: tuple[int, ...] = (256, 128),
        num_train_timesteps: int = 2000,
        timestep_groups: int = 5,
        binarizer: str = "bidiffsr",
        identity_shortcut: bool = True,
        downsample: str = "cp",
        upsample: str = "cp",
        fusion: str = "csf",
        timestep_aware_shift: bool = True,
        timestep_aware_activation: bool = True,
        middle_attention: bool = True,
        cross_timestep_blocks: int = 0,
    ):
        super().__init__()
        channel_mults = tuple(channel_mults)
        fp_resolutions = tuple(fp_resolutions)
        widths = [base_channels * m for m in channel_mults]
        self._validate(widths)
        quantizer = get_binarizer(binarizer)
        groups_k = timestep_groups if quantizer.timestep_aware else 1
        shift_groups = groups_k if timestep_aware_shift else 1
        activation_groups = groups_k if timestep_aware_activation else 1
        self.uses_groups = max(shift_groups, activation_groups) > 1

        def conv(cin: int, cout: int, k: int, binary: bool, stride: int = 1) -> nn.Module:
            if not binary:
                return FPConv2d(cin, cout, k, stride=stride)
            return BinaryConv2d(cin, cout, k, quantizer, stride=stride, shift_groups=shift_groups,
                                activation_groups=activation_groups, shortcut=identity_shortcut)

        def linear(cin: int, cout: int, binary: bool) -> nn.Module:
            return BinaryLinear(cin, cout, quantizer) if binary and quantizer.binary_linears else nn.Linear(cin, cout)

        temb_dim = base_channels
        self.time_proj = Timesteps(base_channels, flip_sin_to_cos=False, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(base_channels, 4 * base_channels, out_dim=temb_dim)
        if quantizer.binary_linears:  # BiMaCoSR binarizes every linear, the time embedding's too
            self.time_embedding.linear_1 = linear(base_channels, 4 * base_channels, True)
            self.time_embedding.linear_2 = linear(4 * base_channels, temb_dim, True)
        self.conv_in = FPConv2d(in_channels, base_channels, 3)

        def res_block(ch: int, binary: bool) -> ResBlock:
            return ResBlock(ch, temb_dim, conv, binary, dropout, norm_groups, linear)

        last = len(widths) - 1
        self.encoder = nn.ModuleList()
        for i, ch in enumerate(widths):
            down = None
            if i < last:
                down = CPDown(ch, conv) if downsample == "cp" else ConvDown(ch, widths[i + 1], conv)
            self.encoder.append(EncoderLevel([res_block(ch, True) for _ in range(num_res_blocks)], down))

        self.mid_blocks = nn.ModuleList([res_block(widths[-1], True), res_block(widths[-1], True)])
        self.mid_attention = SelfAttention(widths[-1], norm_groups) if middle_attention else None

        def make_fusion(ch: int, binary: bool) -> nn.Module:
            if fusion == "add":
                return AddFusion()
            if fusion == "concat":
                return ConcatFusion(ch, conv, binary)
            return SplitFusion(ch, conv, binary, shuffle=fusion == "csf")

        self.decoder = nn.ModuleList()
        for i in reversed(range(len(widths))):
            ch = widths[i]
            fp = image_size // 2**i in fp_resolutions
            up = None
            if i > 0:  # the up-sampler stays binarized even after a full-precision level, as in the official net
                up = CPUp(ch, conv) if upsample == "cp" else ConvUp(ch, widths[i - 1], conv)
            n = num_res_blocks + 1
            self.decoder.append(
                DecoderLevel([make_fusion(ch, not fp) for _ in range(n)], [res_block(ch, not fp) for _ in range(n)],
                             up, full_precision=fp)
            )

        self.norm_out = nn.GroupNorm(norm_groups, base_channels)
        self.conv_out = FPConv2d(base_channels, out_channels, 3)
        if cross_timestep_blocks:
            self.cross_timestep_coefficients = nn.Parameter(
                torch.full((self.cross_timestep_bins, cross_timestep_blocks), CROSS_TIMESTEP_INIT))

    def _validate(self, widths: list[int]) -> None:
        c = self.config
        if c.in_channels < 2 or c.in_channels % 2:
            raise _config_error("in_channels", c.in_channels, "must be even: the condition and x_t are concatenated")
        if c.base_channels <= 0 or not c.channel_mults or min(c.channel_mults) <= 0:
            raise _config_error("channel_mults", c.channel_mults, "must be a non-empty list of positive integers")
        if c.num_res_blocks < 1:
            raise _config_error("num_res_blocks", c.num_res_blocks, "must be at least 1")
        if not 0.0 <= c.dropout < 1.0:
            raise _config_error("dropout", c.dropout, "must be in [0, 1)")
        for w in widths:
            if w % c.norm_groups:
                raise _config_error("norm_groups", c.norm_groups,
                                    f"must divide every level width; {w} is not a multiple")
        if c.downsample not in DOWNSAMPLE_CHOICES:
            raise _config_error("downsample", c.downsample, f"is not one of {DOWNSAMPLE_CHOICES}")
        if c.upsample not in UPSAMPLE_CHOICES:
            raise _config_error("upsample", c.upsample, f"is not one of {UPSAMPLE_CHOICES}")
        if c.fusion not in FUSION_CHOICES:
            raise _config_error("fusion", c.fusion, f"is not one of {FUSION_CHOICES}")
        for i in range(len(widths) - 1):
            if "cp" in (c.downsample, c.upsample) and widths[i + 1] != 2 * widths[i]:
                raise _config_error(
                    "channel_mults", list(c.channel_mults),
                    "must double from level to level with CP-Down/CP-Up (they map C to 2C and back); "
                    f"level {i} has width {widths[i]}, level {i + 1} has {widths[i + 1]}",
                )
        if len(widths) > 1 and widths[0] % 2:
            raise _config_error("base_channels", c.base_channels,
                                "must be even: CP-Down/CP-Up split channels in halves")
        decoder_blocks = len(widths) * (c.num_res_blocks + 1)
        if not 0 <= c.cross_timestep_blocks <= decoder_blocks:
            raise _config_error("cross_timestep_blocks", c.cross_timestep_blocks,
                                f"must be between 0 (off) and the number of decoder blocks, {decoder_blocks}")
        if not 1 <= c.timestep_groups <= c.num_train_timesteps:
            raise _config_error("timestep_groups", c.timestep_groups,
                                f"must be between 1 and num_train_timesteps={c.num_train_timesteps}")
        nominal = {c.image_size // 2**i for i in range(len(widths))}
        for r in c.fp_resolutions:
            if r not in nominal:
                raise _config_error("fp_resolutions", list(c.fp_resolutions),
                                    f"names {r}, which is not a level resolution of image_size={c.image_size} "
                                    f"(levels: {sorted(nominal, reverse=True)})")

    @staticmethod
    def twin_config(config: dict) -> dict:
        """The config of a student's full-precision twin: the same layout and TaR/TaA groups, binarization off."""
        config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        if not get_binarizer(config.get("binarizer", "bidiffsr")).timestep_aware:
            config["timestep_groups"] = 1
        return {**config, "binarizer": "none", "cross_timestep_blocks": 0}

    def feature_names(self) -> list[str]:
        """The res-block features this network taps (`return_features`), in order, from one forward pass of a copy on
        the meta device (no memory, no compute; the names do not depend on the input size)."""
        with torch.device("meta"):
            probe = type(self).from_config(self.config)
        c, side = self.config, self.size_multiple
        x = torch.zeros(1, c.out_channels, side, side, device="meta")
        y = torch.zeros(1, c.in_channels - c.out_channels, side, side, device="meta")
        return list(probe(x, y, torch.zeros(1, dtype=torch.long, device="meta"), return_features=True)[1])

    def layout_mismatch(self, other: nn.Module) -> str:
        """Why `other`'s features do not correspond to this model's channel for channel ('' when they do)."""
        if type(other) is not type(self):
            return f"the teacher's denoiser is a {type(other).__name__}, not a {type(self).__name__}"
        difference = layout_difference(self.config, other.config)
        if difference:
            key, mine, theirs = difference
            return f"{key} is {theirs!r} in the teacher but {mine!r} in the student"
        return ""

    def init_from_teacher(self, teacher: nn.Module) -> list[str]:
        """Copy an aligned full-precision twin's weights into this student (BiDM's set-up: the student starts from the
        teacher, so channel c of a feature means the same in both). Returns the student's parameters the teacher
        does not have (they keep their initial values); a layout or shape mismatch is a ValueError saying which."""
        why = self.layout_mismatch(teacher)
        if why:
            raise ValueError(f"cannot start the student from this teacher: {why}")
        own, theirs = self.state_dict(), teacher.state_dict()
        for name, value in theirs.items():
            if name in own and own[name].shape != value.shape:
                raise ValueError(f"cannot start the student from this teacher: {name} has shape "
                                 f"{tuple(value.shape)} in the teacher but {tuple(own[name].shape)} in the student")
        result = self.load_state_dict({k: v for k, v in theirs.items() if k in own}, strict=False)
        for module in self.modules():
            if isinstance(module, BinarizedWeight):
                module.start_from_full_precision()
        return [k for k in result.missing_keys if ".branches." not in k]  # the branches were just split off

    @property
    def cross_timestep_bins(self) -> int:
        """Rows of the cross-timestep coefficient table: BiDM's 100 bins of 10 steps for T = 1000, generally
        min(100, T) equal bins."""
        return min(CROSS_TIMESTEP_MAX_BINS, self.config.num_train_timesteps)

    def _mixing_coefficients(self, t: Tensor) -> Tensor:
        """(B, N) coefficients c for each sample's timestep bin."""
        bins = self.cross_timestep_bins
        row = torch.div(t.long() * bins, self.config.num_train_timesteps, rounding_mode="floor").clamp(0, bins - 1)
        return self.cross_timestep_coefficients.index_select(0, row)

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this (one factor 2 per down-sampling)."""
        return 2 ** (len(self.config.channel_mults) - 1)

    def forward(self, x_t: Tensor, cond: Tensor, t: Tensor, return_features: bool = False,
                cache: dict[str, Tensor] | None = None):
        """Predicted noise for noisy images `x_t` (B, 3, H, W) given `cond` = bicubic(LR) at HR size and integer
        timesteps `t` (B,), (B, 1) or a scalar. With `return_features=True` also returns the res-block outputs by
        name ("down.{level}.{block}", "mid.{block}", "up.{level}.{block}", level 0 the finest), at padded size.
        `cache`: the features of a pass one step noisier, mixed into the last `cross_timestep_blocks` decoder blocks
        (only for a model with that connection; None: the first sampling step, or no connection)."""
        b, _, h, w = x_t.shape
        if cache is not None and not self.config.cross_timestep_blocks:
            raise ValueError("a feature cache was given, but this model has no cross-timestep connection "
                             "(cross_timestep_blocks = 0)")
        t = per_sample_timesteps(t, b, x_t.device)
        group = None
        if self.uses_groups:
            group = timestep_group(t, self.config.timestep_groups, self.config.num_train_timesteps)
        temb = self.time_embedding(self.time_proj(t).to(x_t.dtype))

        x = pad_to_multiple(torch.cat([cond, x_t], dim=1), self.size_multiple)
        features: dict[str, Tensor] = {}
        x = self.conv_in(x)
        skips = [x]
        for i, level in enumerate(self.encoder):
            for j, block in enumerate(level.blocks):
                x = block(x, temb, group)
                features[f"down.{i}.{j}"] = x
                skips.append(x)
            if level.down is not None:
                x = level.down(x, group)
                skips.append(x)

        x = self.mid_blocks[0](x, temb, group)
        if self.mid_attention is not None:
            x = self.mid_attention(x)
        features["mid.0"] = x
        x = self.mid_blocks[1](x, temb, group)
        features["mid.1"] = x

        mixed, first_mixed, block_index = None, 0, 0
        if cache is not None:
            mixed = self._mixing_coefficients(t).to(x.dtype)[:, :, None, None, None]  # (B, N, 1, 1, 1)
            first_mixed = len(self.decoder) * len(self.decoder[0].blocks) - mixed.shape[1]
        for k, level in enumerate(self.decoder):
            i = len(self.decoder) - 1 - k
            for j, (fusion, block) in enumerate(zip(level.fusions, level.blocks)):
                x = block(fusion(x, skips.pop(), group), temb, group)
                if mixed is not None and block_index >= first_mixed:
                    c = mixed[:, block_index - first_mixed]
                    x = (1 - c) * x + c * cache[f"up.{i}.{j}"].detach()
                block_index += 1
                features[f"up.{i}.{j}"] = x
            if level.up is not None:
                x = level.up(x, group)

        out = self.conv_out(F.silu(self.norm_out(x), inplace=True))[:, :, :h, :w]
        return (out, features) if return_features else out

    def merge_for_inference(self) -> int:
        """Inference forms of full-precision parts, the same function with its sums in another order: CS-Fusion's two
        full-precision 1x1 convs become one conv of the decoder map plus one of the skip
        (`SplitFusion.merge_for_inference`), and the middle attention's products run as 1x1 convs without gradients
        (`attention_by_convs`). Returns how many modules changed; call it after the weights are final."""
        return sum(m.merge_for_inference() for m in self.modules() if isinstance(m, (SplitFusion, SelfAttention)))

    def use_packed_kernels(self) -> list[str]:
        """Run every binarized conv whose binarizer allows it on packed sign bits (CPU inference,
        `students.packed_conv`); returns the names of the binarized convs that keep their float path (their binarizer's
        activations are not plain signs). Call it after the weights are final (it packs them).

        With the kernels built, the full-precision parts take their inference forms (`merge_for_inference`), and the
        model moves to channels-last memory: the kernels read and write channels-last activations, and the
        full-precision convs around them run 1.1-11x faster on CPU that way than on contiguous ones (see
        `benchmarks/binary_speed.py`), so no layer converts between the two."""
        binarized = [(name, m) for name, m in self.named_modules()
                     if isinstance(m, BinaryConv2d) and m.binarizer.binary]
        try:
            kept = [name for name, module in binarized if not module.use_packed_kernel()]
            self.merge_for_inference()
            self.to(memory_format=torch.channels_last)
            return kept
        except PackedKernelsUnavailable as err:  # no compiler here: the float path gives the same outputs
            for _, module in binarized:
                module.packed_filters = None
            warnings.warn(f"{err}; the float path runs instead (the same outputs, float speed)", stacklevel=2)
            return [name for name, _ in binarized]

    def set_training_progress(self, progress: float | Tensor) -> None:
        """Training progress in [0, 1] for binarizers with a schedule (IR-Net's EDE); a no-op for the others."""
        for module in self.modules():
            if isinstance(module, BinaryConv2d) and hasattr(module, "progress"):
                module.progress.fill_(float(progress))


# The class's earlier spelling: configs, model indexes and loader files saved before name it, and load through this.
BIDiffSRUNet = BiDiffSRUNet
CLASS_NAMES = ("BiDiffSRUNet", "BIDiffSRUNet")  # what a saved config's _class_name may say of this class
