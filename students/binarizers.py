"""The binarizers a student can be built with, selected by name: BI-DiffSR and the baselines of its Table 2.

A `Binarizer` says how a `BinaryConv2d` quantizes its input and its weight and which extras the unit has.
Definitions follow the original papers; where a diffusion-SR re-implementation (Kai-Liu001/BiMaCoSR) differs and
we follow it, the entry says so.

| name      | activation                         | weight (forward; gradient reaching W)    | unit extras              |
| --------- | ---------------------------------- | ---------------------------------------- | ------------------------ |
| bidiffsr  | ApproxSign                         | alpha * sign(W); g * 1[|W| <= 1]         | TaR shift, TaA RPReLU (K) |
| bbcu      | ApproxSign                         | same                                     | shift, RPReLU (K = 1)    |
| reactnet  | ApproxSign                         | same                                     | shift, FP bias, shortcut then RPReLU |
| xnor      | mean_c|x| (detached) * sign, clip  | alpha * sign(W); g * (1/n + alpha 1[|W| <= 1]) | FP bias            |
| bnn       | sign, clip STE                     | sign(W); g * 1[|W| <= 1]                 |                          |
| dorefa    | round(clip(x, 0, 1)), STE in [0,1] | mean|W| of the layer * sign(W); g        |                          |
| irnet     | sign, EDE                          | Libra-PB: s * sign(W^), s = 2^round(log2 mean|W^|); s * EDE'(W^) through the standardisation |  |
| none      | identity (full precision)          | W; g                                     | as bidiffsr: the FP twin |

Weight gradients follow each method's own definition (g = dL/dW_b): BI-DiffSR, BBCU and ReActNet detach the scale
(their `HardBinaryConv`: `W_b.detach() - clip(W).detach() + clip(W)`); DoReFa passes g straight through; XNOR-Net's
paper gives g (1/n + alpha 1[|W| <= 1]); IR-Net's code multiplies the EDE output by the detached power-of-two scale.

`none` switches binarization off and keeps every parameter (shift, RPReLU, shortcut) and name: a `BIDiffSRUNet`
built with it is the student's full-precision twin, whose weights a binarized student can start from.

Every unit keeps the identity shortcut where shapes allow unless the model disables it (the ablation switch), so
the baselines differ from BI-DiffSR only in the binarizer, as in the paper's comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from students.binary import (ApproxSign, BinaryConv2d, ClipSign, EDESign, XNORWeight, channel_scale, ede_coefficients,
                             scaled_sign_clip_ste, scaled_sign_identity_ste)

Quantizer = Callable[[Tensor, BinaryConv2d], Tensor]


@dataclass(frozen=True)
class Binarizer:
    name: str
    quantize_input: Quantizer
    quantize_weight: Quantizer
    learnable_shift: bool = False
    rprelu: bool = False
    conv_bias: bool = False
    shortcut_before_activation: bool = False
    timestep_aware: bool = False  # TaR/TaA get K groups; otherwise the shift/RPReLU have one
    needs_progress: bool = False  # reads the conv's `progress` buffer (IR-Net's EDE schedule)
    binary: bool = True  # False only for "none" (the full-precision twin): weights stored and counted as floats


def _approx_sign(u: Tensor, conv: BinaryConv2d) -> Tensor:
    return ApproxSign.apply(u)


def _clip_sign(u: Tensor, conv: BinaryConv2d) -> Tensor:
    return ClipSign.apply(u)


def _identity(u: Tensor, conv: BinaryConv2d) -> Tensor:
    return u


def _scaled_clip_sign_weight(w: Tensor, conv: BinaryConv2d) -> Tensor:
    return scaled_sign_clip_ste(w, channel_scale(w))


def _xnor_weight(w: Tensor, conv: BinaryConv2d) -> Tensor:
    return XNORWeight.apply(w)


def _sign_weight(w: Tensor, conv: BinaryConv2d) -> Tensor:
    return ClipSign.apply(w)


def _xnor_input(u: Tensor, conv: BinaryConv2d) -> Tensor:
    return u.detach().abs().mean(dim=1, keepdim=True) * ClipSign.apply(u)


def _dorefa_input(u: Tensor, conv: BinaryConv2d) -> Tensor:
    clipped = u.clamp(0.0, 1.0)
    return clipped + (torch.round(clipped) - clipped).detach()


def _dorefa_weight(w: Tensor, conv: BinaryConv2d) -> Tensor:
    return scaled_sign_identity_ste(w, w.detach().abs().mean())


def _irnet_input(u: Tensor, conv: BinaryConv2d) -> Tensor:
    t, k = ede_coefficients(conv.progress)
    return EDESign.apply(u, t, k)


def _irnet_weight(w: Tensor, conv: BinaryConv2d) -> Tensor:
    flat = w.reshape(w.shape[0], -1)
    standardized = (flat - flat.mean(dim=1, keepdim=True)) / flat.std(dim=1, keepdim=True)
    scale = torch.pow(2.0, torch.round(torch.log2(standardized.detach().abs().mean(dim=1, keepdim=True))))
    t, k = ede_coefficients(conv.progress)
    return (scale * EDESign.apply(standardized, t, k)).reshape_as(w)


BINARIZERS: dict[str, Binarizer] = {
    b.name: b
    for b in (
        Binarizer("bidiffsr", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, rprelu=True,
                  timestep_aware=True),
        Binarizer("bbcu", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, rprelu=True),
        Binarizer("reactnet", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, rprelu=True,
                  conv_bias=True, shortcut_before_activation=True),
        Binarizer("xnor", _xnor_input, _xnor_weight, conv_bias=True),
        Binarizer("bnn", _clip_sign, _sign_weight),
        Binarizer("dorefa", _dorefa_input, _dorefa_weight),
        Binarizer("irnet", _irnet_input, _irnet_weight, needs_progress=True),
        Binarizer("none", _identity, _identity, learnable_shift=True, rprelu=True, timestep_aware=True, binary=False),
    )
}


def get_binarizer(name: str, field: str = "binarizer") -> Binarizer:
    """The binarizer called `name`; an unknown name is an error naming the field and the choices."""
    try:
        return BINARIZERS[name]
    except KeyError:
        raise ValueError(
            f"{field}={name!r} is not a known binarizer; choose one of: {', '.join(sorted(BINARIZERS))}"
        ) from None
