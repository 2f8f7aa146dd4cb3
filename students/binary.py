"""1-bit primitives: sign functions with surrogate gradients, weight binarizers, and the binary conv unit.

Every binarized convolution in the project is a `BinaryConv2d`. What it does to activations and weights, and
whether it carries a learnable shift, an RPReLU and an FP bias, is decided by a `Binarizer` (see
`students.binarizers`), so the BI-Conv block of BI-DiffSR and the Table 2 baselines share one code path.

Sign convention: torch.sign, so sign(0) = 0 everywhere (the official code bases do the same).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from students.packed_conv import PackedFilters
from students.timestep import TimestepRPReLU, TimestepShift, select_rows

if TYPE_CHECKING:
    from students.binarizers import Binarizer


class ApproxSign(torch.autograd.Function):
    """sign(u) forward; Bi-Real's piecewise-quadratic surrogate backward: d(u) = max(0, 2 - 2|u|)."""

    @staticmethod
    def forward(ctx, u: Tensor) -> Tensor:
        ctx.save_for_backward(u)
        return torch.sign(u)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (u,) = ctx.saved_tensors
        return grad * (2.0 - 2.0 * u.abs()).clamp_min(0.0)


class ClipSign(torch.autograd.Function):
    """sign(u) forward; clip ("hard tanh") straight-through backward: gradient passes where |u| <= 1."""

    @staticmethod
    def forward(ctx, u: Tensor) -> Tensor:
        ctx.save_for_backward(u)
        return torch.sign(u)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (u,) = ctx.saved_tensors
        return grad * (u.abs() <= 1.0).to(grad.dtype)


class XNORWeight(torch.autograd.Function):
    """XNOR-Net's weight binarizer: W_b = alpha_o * sign(W), alpha_o = mean |W_o| (n = Cin kh kw weights per filter);
    backward as the paper's eq. for dC/dW: g * (1 / n + alpha_o * 1[|W| <= 1]) (the scale is part of it)."""

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        ctx.save_for_backward(w, alpha)
        return alpha * torch.sign(w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        w, alpha = ctx.saved_tensors
        n = w[0].numel()
        return grad * (1.0 / n + alpha * (w.abs() <= 1.0).to(grad.dtype))


class EDESign(torch.autograd.Function):
    """sign(u) forward; IR-Net's Error Decay Estimator backward: g * k * t * (1 - tanh(t u)^2)."""

    @staticmethod
    def forward(ctx, u: Tensor, t: Tensor, k: Tensor) -> Tensor:
        ctx.save_for_backward(u, t, k)
        return torch.sign(u)

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, t, k = ctx.saved_tensors
        return grad * k * t * (1.0 - torch.tanh(t * u) ** 2), None, None


EDE_T_MIN = 0.1
EDE_T_MAX = 10.0


def ede_coefficients(progress: Tensor) -> tuple[Tensor, Tensor]:
    """IR-Net's (t, k) for a training progress in [0, 1]: t = Tmin * 10^(p log10(Tmax/Tmin)), k = max(1/t, 1)."""
    t = EDE_T_MIN * torch.pow(10.0, progress * math.log10(EDE_T_MAX / EDE_T_MIN))
    return t, torch.clamp(1.0 / t, min=1.0)


def channel_scale(weight: Tensor) -> Tensor:
    """Per-output-channel mean |W| over (Cin, kh, kw) (a linear weight: over Cin), detached: alpha in
    W_b = alpha * sign(W)."""
    return weight.detach().abs().mean(dim=tuple(range(1, weight.dim())), keepdim=True)


def scaled_sign_clip_ste(weight: Tensor, scale: Tensor) -> Tensor:
    """W_b = scale * sign(W) forward; backward dL/dW = dL/dW_b * 1[|W| <= 1], the scale NOT in the gradient.

    This is the official BI-DiffSR / BBCU / ReActNet weight estimator (W_b.detach() - clamp(W).detach() +
    clamp(W)). Writing it as scale * ClipSign(W) instead multiplies the gradient by alpha (~0.007 at full size),
    which pushes the binary-weight gradients below Adam's eps and stalls the binary layers."""
    if not (torch.is_grad_enabled() and weight.requires_grad):  # inference: the same values, no STE bookkeeping
        return scale.detach() * torch.sign(weight.detach())
    passed = weight * (weight.detach().abs() <= 1.0)  # torch.clamp's backward drops the edges |W| = 1 themselves
    return (scale.detach() * torch.sign(weight.detach())) + (passed - passed.detach())


def scaled_sign_identity_ste(weight: Tensor, scale: Tensor) -> Tensor:
    """W_b = scale * sign(W) forward; identity backward dL/dW = dL/dW_b (DoReFa's weight estimator)."""
    return (scale.detach() * torch.sign(weight.detach())) + (weight - weight.detach())


class MatrixBranches(nn.Module):
    """BiMaCoSR's full-precision branches beside a binarized conv (Kai-Liu001/BiMaCoSR,
    models/quant_modules/binary_modules/ours.py): a sparse Cout x Cin matrix S (SMB: 2 max(Cin, Cout) entries at
    positions fixed at initialisation, trainable values) plus a rank-r product U V (LRMB, r = 8), both applied as one
    1x1 map at the conv's stride. The official code runs S as a torch.sparse product and LRMB as two 1x1 convs; the
    sum is the same linear map, computed here as one dense 1x1 conv (the OPs rule still counts the sparse and
    low-rank work, `students.complexity`). For a stride-2 conv the official code drops both branches (equal widths:
    an average-pooled input takes SMB's place) or has no rule (widths differ); applied at the stride, as here, the
    split stays exact. BI-DiffSR's network has stride-2 binary convs only in its `downsample = "conv"` ablation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, rank: int = 8) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.rank = min(rank, in_channels, out_channels)
        nonzeros = min(2 * max(in_channels, out_channels), in_channels * out_channels)
        self.sparse_values = nn.Parameter(torch.zeros(nonzeros))
        self.register_buffer("sparse_index", torch.zeros(nonzeros, dtype=torch.long))  # flat, into Cout x Cin
        self.down = nn.Parameter(torch.zeros(self.rank, in_channels))
        self.up = nn.Parameter(torch.zeros(out_channels, self.rank))

    def matrix(self, low_rank: bool = True) -> Tensor:
        """The Cout x Cin map S + U V (S alone with `low_rank=False`)."""
        dense = self.up @ self.down if low_rank else self.up.new_zeros(self.out_channels, self.in_channels)
        return dense.flatten().index_add(0, self.sparse_index, self.sparse_values).reshape(dense.shape)

    def sparse(self, x: Tensor) -> Tensor:
        """S alone, as a 1x1 map at the stride."""
        return F.conv2d(x, self.matrix(low_rank=False)[:, :, None, None].to(x.dtype), stride=self.stride)

    def forward(self, x: Tensor) -> Tensor:
        """A 1x1 map at the stride on (B, Cin, H, W); on (B, Cin) vectors (a linear layer's branches) a matrix
        product."""
        if x.dim() == 2:
            return F.linear(x, self.matrix().to(x.dtype))
        return F.conv2d(x, self.matrix()[:, :, None, None].to(x.dtype), stride=self.stride)

    @torch.no_grad()
    def absorb(self, weight: Tensor) -> Tensor:
        """Initialise from a full-precision conv weight W0 (Cout, Cin, k, k) and return the main-branch weight, so
        that conv(x, W_main) + S x + U V x = conv(x, W0) (BiMaCoSR's initialisation):
        S = the 2 max(Cin, Cout) largest-magnitude entries of W0 averaged over the kernel window, taken off W0's
        centre tap; U V = the best rank-r approximation (SVD, sqrt(sigma) on both sides) of the kernel-averaged
        remainder, also taken off the centre tap."""
        w = weight.detach().double().clone()
        centre = (w.shape[2] // 2, w.shape[3] // 2)
        averaged = w.mean(dim=(2, 3)).flatten()
        index = averaged.abs().topk(self.sparse_values.numel()).indices
        values = averaged[index]
        w[:, :, centre[0], centre[1]] -= torch.zeros_like(averaged).index_add(0, index, values).reshape(w.shape[:2])
        u, sigma, vh = torch.linalg.svd(w.mean(dim=(2, 3)), full_matrices=False)
        root = sigma[: self.rank].sqrt()
        up, down = u[:, : self.rank] * root, root[:, None] * vh[: self.rank]
        w[:, :, centre[0], centre[1]] -= up @ down
        self.sparse_index.copy_(index)
        self.sparse_values.copy_(values.to(self.sparse_values.dtype))
        self.up.copy_(up.to(self.up.dtype))
        self.down.copy_(down.to(self.down.dtype))
        return w.to(weight.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, nonzeros={self.sparse_values.numel()}, rank={self.rank}, "
                f"stride={self.stride}")


BIDM_SHORTCUT_INIT = 0.3  # BiDM's lambda (LDM code; its CIFAR variant starts at 0)


class BinarizedWeight:
    """What a layer with a binarized `weight` shares: the weight it really uses, inference from a packed file, and
    `start_from_full_precision()` (each layer's own) after a twin's weights were loaded."""

    stores_binary_weight = False

    def use_stored_binary_weight(self) -> None:
        """Inference from a packed checkpoint: `weight` already holds W_b, use it as it is."""
        self.stores_binary_weight = True

    def binary_weight(self) -> Tensor:
        """The weight the layer really uses (values alpha * {-1, 0, +1} or the binarizer's equivalent)."""
        if self.stores_binary_weight:
            return self.weight
        return self.binarizer.quantize_weight(self.weight, self)


class BinaryConv2d(BinarizedWeight, nn.Module):
    """A 1-bit convolution unit: [shift] -> binarize input -> conv with binarized weight [+ FP bias]
    [x activation-scale map] [+ matrix branches] -> [RPReLU] -> [+ shortcut].

    With the BI-DiffSR binarizer this is the BI-Conv block: TaR shift b_g, ApproxSign, W_b = alpha * sign(W) with a
    clip STE on W, TaA RPReLU_g, and the unshifted input added back. The identity shortcut exists only where input
    and output shapes agree (same width, stride 1); elsewhere it is dropped, as in the public re-implementations.
    BiDM's unit (`activation_scale_map`, `scaled_shortcut`) multiplies the conv by a learnable k x k filtering of the
    channel-mean |x| and adds |lambda| x the input (average-pooled at stride 2, a full-precision 1x1 conv where the
    width changes). BiMaCoSR's (`matrix_branches`) adds the sparse and low-rank full-precision branches.

    `forward(x, group)` takes the per-sample timestep-group index (B,) used by TaR/TaA.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        binarizer: Binarizer,
        *,
        stride: int = 1,
        shift_groups: int = 1,
        activation_groups: int = 1,
        shortcut: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.binarizer = binarizer
        # Default Conv2d initialisation, as the official code (kaiming-uniform weight).
        proto = nn.Conv2d(in_channels, out_channels, kernel_size, bias=binarizer.conv_bias)
        self.weight = nn.Parameter(proto.weight.detach().clone())
        self.bias = nn.Parameter(proto.bias.detach().clone()) if binarizer.conv_bias else None
        self.shift = TimestepShift(in_channels, shift_groups) if binarizer.learnable_shift else None
        self.activation = TimestepRPReLU(out_channels, activation_groups) if binarizer.rprelu else None
        self.has_shortcut = shortcut and (binarizer.scaled_shortcut or (in_channels == out_channels and stride == 1))
        self.scale_map = self.shortcut_scale = self.projection = self.branches = None
        if binarizer.activation_scale_map:
            # BiDM's learnable k x k filtering of mean_c |x| (Xingyu-Zheng/BiDM util_ours.py: box filter, with bias)
            self.scale_map = nn.Conv2d(1, 1, kernel_size, stride=stride, padding=kernel_size // 2)
            nn.init.constant_(self.scale_map.weight, 1.0 / kernel_size**2)
        if self.has_shortcut and binarizer.scaled_shortcut:
            self.shortcut_scale = nn.Parameter(torch.tensor(BIDM_SHORTCUT_INIT))
            if in_channels != out_channels:
                self.projection = nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        if binarizer.matrix_branches:
            self.branches = MatrixBranches(in_channels, out_channels, stride)
        if binarizer.needs_progress:
            self.register_buffer("progress", torch.zeros(()), persistent=False)
        self.stores_binary_weight = False
        self.packed_filters = None  # students.packed_conv.PackedFilters once switched to the packed kernel

    def use_packed_kernel(self) -> bool:
        """Inference on packed sign bits (`students.packed_conv`) from now on; False (and the float path kept) when
        this binarizer's forward is not sign x sign. Changing the weights afterwards needs another call."""
        if not self.binarizer.sign_activations:
            return False
        with torch.no_grad():
            self.packed_filters = PackedFilters(self.binary_weight(), self.bias, self.stride, self.kernel_size // 2)
        return True

    def _packed_unit(self, x: Tensor, group: Tensor | None, channel_add: Tensor | None,
                     addend: Tensor | None) -> Tensor:
        """The whole unit in the packed kernel: TaR shift while packing, RPReLU, identity shortcut, `channel_add` and
        `addend` in its output loop (what `forward` computes step by step, in the same float order)."""
        return self.packed_filters(
            x, shift=None if self.shift is None else select_rows(self.shift.bias, group),
            activation=None if self.activation is None else self.activation.tables(group),
            residual=x if self.has_shortcut else None, residual_first=self.binarizer.shortcut_before_activation,
            channel_add=channel_add, addend=addend)

    @torch.no_grad()
    def start_from_full_precision(self) -> None:
        """After the full-precision weights were loaded into `weight`: split them as the binarizer needs (BiMaCoSR:
        into the main branch and the sparse and low-rank branches, exact in full precision); a no-op otherwise."""
        if self.branches is not None:
            self.weight.copy_(self.branches.absorb(self.weight))

    def forward(self, x: Tensor, group: Tensor | None = None, channel_add: Tensor | None = None,
                addend: Tensor | None = None) -> Tensor:
        """The unit's output for `x` (B, Cin, H, W), with TaR/TaA's group per sample (B,), plus `channel_add` (B, Cout)
        per channel and then `addend` (a map of the output's shape) when given: a res-block's time embedding, and its
        input or the other conv of a pair, added here so that the packed kernel fuses them."""
        if self.packed_filters is not None and self.scale_map is None and self.branches is None \
                and self.shortcut_scale is None:
            return self._packed_unit(x, group, channel_add, addend)
        u = self.shift(x, group) if self.shift is not None else x
        if self.packed_filters is not None:
            y = self.packed_filters(u)
        else:
            a = self.binarizer.quantize_input(u, self)
            y = F.conv2d(a, self.binary_weight(), self.bias, stride=self.stride, padding=self.kernel_size // 2)
        if self.scale_map is not None:
            y = y * self.scale_map(x.abs().mean(dim=1, keepdim=True))
        inside = self.branches is not None and not self.binarizer.branches_after_activation
        if inside:
            # `bimacosr_inside`: the unit being binarized already ends in the twin's trained RPReLU, so the branches
            # join the conv before it and the unit starts exactly equal to the twin.
            y = y + self.branches(u)
        if self.has_shortcut and self.binarizer.shortcut_before_activation:
            y = y + self.shortcut(x)
        if self.activation is not None:
            y = self.activation(y, group)
        if self.branches is not None and not inside:
            y = y + self.official_branches(x)
        if self.has_shortcut and not self.binarizer.shortcut_before_activation:
            y = y + self.shortcut(x)
        if channel_add is not None:
            y = y + channel_add[:, :, None, None]
        return y if addend is None else y + addend

    def official_branches(self, x: Tensor) -> Tensor:
        """BiMaCoSR's branches as its code adds them, after the activation and on the raw input: both at stride 1;
        at a stride with equal widths the average-pooled input in their place (their parts stay removed from the main
        weight, as there); at a stride with a width change the sparse branch alone (the official code has no rule)."""
        if self.stride == 1:
            return self.branches(x)
        if self.in_channels == self.out_channels:
            return F.avg_pool2d(x, self.stride, ceil_mode=True)
        return self.branches.sparse(x)

    def shortcut(self, x: Tensor) -> Tensor:
        """The input as the output's shape needs it: itself; BiDM's |lambda| x (x, average-pooled at stride > 1, or a
        full-precision 1x1 conv where the width changes)."""
        if self.shortcut_scale is None:
            return x
        if self.projection is not None:
            x = self.projection(x)
        elif self.stride > 1:
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        return self.shortcut_scale.abs() * x

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"binarizer={self.binarizer.name}, shortcut={self.has_shortcut}"
        )


class FPConv2d(nn.Conv2d):
    """A full-precision conv with the conv-unit call signature `forward(x, group)` (group is ignored), so blocks
    can hold either kind of conv without branching."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)

    def forward(self, x: Tensor, group: Tensor | None = None, channel_add: Tensor | None = None,
                addend: Tensor | None = None) -> Tensor:
        y = super().forward(x)
        if channel_add is not None:
            y = y.add_(channel_add[:, :, None, None])
        return y if addend is None else y.add_(addend)


class BinaryLinear(BinarizedWeight, nn.Module):
    """BiMaCoSR's binarized linear layer (`binary_linears`): linear(a, W_b) + bias + S x + U V x, with
    a = (detached per-row mean |x|) * ApproxSign(x) and W_b = alpha * sign(W) (clip STE); no shift, no activation.
    Parameter names are nn.Linear's, so a twin's linear loads into it; `start_from_full_precision` splits it."""

    def __init__(self, in_features: int, out_features: int, binarizer: Binarizer) -> None:
        super().__init__()
        self.in_features, self.out_features, self.binarizer = in_features, out_features, binarizer
        proto = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(proto.weight.detach().clone())
        self.bias = nn.Parameter(proto.bias.detach().clone())
        self.branches = MatrixBranches(in_features, out_features)

    @torch.no_grad()
    def start_from_full_precision(self) -> None:
        self.weight.copy_(self.branches.absorb(self.weight[:, :, None, None])[:, :, 0, 0])

    def forward(self, x: Tensor) -> Tensor:
        a = self.binarizer.quantize_input(x, self)
        return F.linear(a, self.binary_weight(), self.bias) + self.branches(x)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, binarizer={self.binarizer.name}"
