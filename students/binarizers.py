"""The binarizers a student can be built with, selected by name: BI-DiffSR and the baselines of its Table 2.

A `Binarizer` says how a `BinaryConv2d` quantizes its input and its weight and which extras the unit has.
Definitions follow the original papers; where a diffusion-SR re-implementation (Kai-Liu001/BiMaCoSR) differs and
we follow it, the entry says so.

| name      | activation                         | weight                                   | unit extras              |
| --------- | ---------------------------------- | ---------------------------------------- | ------------------------ |
| bidiffsr  | ApproxSign                         | alpha * sign(W), clip STE, alpha detached | TaR shift, TaA RPReLU (K) |
| bbcu      | ApproxSign                         | same                                     | shift, RPReLU (K = 1)    |
| reactnet  | ApproxSign                         | same                                     | shift, FP bias, shortcut then RPReLU |
| xnor      | mean_c|x| (detached) * sign, clip  | same                                     | FP bias                  |
| bnn       | sign, clip STE                     | sign(W), clip STE                        |                          |
| dorefa    | round(clip(x, 0, 1)), STE in [0,1] | mean|W| of the layer * sign(W), identity STE |                      |
| irnet     | sign, EDE                          | Libra-PB: 2^round(log2 mean|W^|) * sign(W^), EDE |                  |

Every unit keeps the identity shortcut where shapes allow unless the model disables it (the ablation switch), so
the baselines differ from BI-DiffSR only in the binarizer, as in the paper's comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from students.binary import ApproxSign, BinaryConv2d, ClipSign, EDESign, IdentitySign, channel_scale, ede_coefficients

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


def _approx_sign(u: Tensor, conv: BinaryConv2d) -> Tensor:
    return ApproxSign.apply(u)


def _clip_sign(u: Tensor, conv: BinaryConv2d) -> Tensor:
    return ClipSign.apply(u)


def _scaled_clip_sign_weight(w: Tensor, conv: BinaryConv2d) -> Tensor:
    return channel_scale(w) * ClipSign.apply(w)


def _sign_weight(w: Tensor, conv: BinaryConv2d) -> Tensor:
    return ClipSign.apply(w)


def _xnor_input(u: Tensor, conv: BinaryConv2d) -> Tensor:
    return u.detach().abs().mean(dim=1, keepdim=True) * ClipSign.apply(u)


def _dorefa_input(u: Tensor, conv: BinaryConv2d) -> Tensor:
    clipped = u.clamp(0.0, 1.0)
    return clipped + (torch.round(clipped) - clipped).detach()


def _dorefa_weight(w: Tensor, conv: BinaryConv2d) -> Tensor:
    return w.detach().abs().mean() * IdentitySign.apply(w)


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
        Binarizer("xnor", _xnor_input, _scaled_clip_sign_weight, conv_bias=True),
        Binarizer("bnn", _clip_sign, _sign_weight),
        Binarizer("dorefa", _dorefa_input, _dorefa_weight),
        Binarizer("irnet", _irnet_input, _irnet_weight, needs_progress=True),
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
