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

from students.timestep import TimestepRPReLU, TimestepShift

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
    """Per-output-channel mean |W| over (Cin, kh, kw), detached: alpha in W_b = alpha * sign(W)."""
    return weight.detach().abs().mean(dim=(1, 2, 3), keepdim=True)


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


class BinaryConv2d(nn.Module):
    """A 1-bit convolution unit: [shift] -> binarize input -> conv with binarized weight [+ FP bias]
    -> [RPReLU] -> [+ identity shortcut].

    With the BI-DiffSR binarizer this is the BI-Conv block: TaR shift b_g, ApproxSign, W_b = alpha * sign(W) with a
    clip STE on W, TaA RPReLU_g, and the unshifted input added back. The shortcut exists only where input and output
    shapes agree (same width, stride 1); elsewhere it is dropped, as in the public re-implementations.

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
        self.has_shortcut = shortcut and in_channels == out_channels and stride == 1
        if binarizer.needs_progress:
            self.register_buffer("progress", torch.zeros(()), persistent=False)
        self.stores_binary_weight = False

    def use_stored_binary_weight(self) -> None:
        """Inference from a packed checkpoint: `weight` already holds W_b, use it as it is."""
        self.stores_binary_weight = True

    def binary_weight(self) -> Tensor:
        """The weight the convolution really uses (values alpha * {-1, 0, +1} or the binarizer's equivalent)."""
        if self.stores_binary_weight:
            return self.weight
        return self.binarizer.quantize_weight(self.weight, self)

    def forward(self, x: Tensor, group: Tensor | None = None) -> Tensor:
        u = self.shift(x, group) if self.shift is not None else x
        a = self.binarizer.quantize_input(u, self)
        y = F.conv2d(a, self.binary_weight(), self.bias, stride=self.stride, padding=self.kernel_size // 2)
        if self.has_shortcut and self.binarizer.shortcut_before_activation:
            y = y + x
        if self.activation is not None:
            y = self.activation(y, group)
        if self.has_shortcut and not self.binarizer.shortcut_before_activation:
            y = y + x
        return y

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

    def forward(self, x: Tensor, group: Tensor | None = None) -> Tensor:
        return super().forward(x)
