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
| bidm      | ApproxSign                         | alpha * sign(W); g * 1[|W| <= 1]         | TaR shift, x conv_k(mean_c|x|), + |lambda| shortcut |
| bimacosr  | mean_c|x| (detached) * ApproxSign  | alpha * sign(W); g * 1[|W| <= 1]         | TaR shift, TaA RPReLU, then + sparse + low-rank FP branches of the raw input; linears binarized |
| bimacosr_inside | the same                     | the same                                 | TaR shift, + sparse + low-rank FP branches, TaA RPReLU; linears FP |
| none      | identity (full precision)          | W; g                                     | as bidiffsr: the FP twin |

Weight gradients follow each method's own definition (g = dL/dW_b): BI-DiffSR, BBCU and ReActNet detach the scale
(their `HardBinaryConv`: `W_b.detach() - clip(W).detach() + clip(W)`); DoReFa passes g straight through; XNOR-Net's
paper gives g (1/n + alpha 1[|W| <= 1]); IR-Net's code multiplies the EDE output by the detached power-of-two scale.

`bidm` is the binary convolution of BiDM's Timestep-friendly Binary Structure ("BiDM: Pushing the Limit of
Quantization for Diffusion Models"; Xingyu-Zheng/BiDM util_ours.py `BNNConv2d`): no bias and no RPReLU in binary
mode, the output multiplied by a learnable k x k filtering of the channel-mean |x|, the shortcut weighted by a
learnable |lambda| (0.3). Its other half, the cross-timestep feature connection, is the UNet's
`cross_timestep_blocks`. `bimacosr` is BiMaCoSR's layer ("BiMaCoSR: Binary One-Step Diffusion Model Leveraging
Flexible Matrix Compression for Real Super-Resolution"; Kai-Liu001/BiMaCoSR ours.py): the binary main branch plus a
sparse and a low-rank full-precision branch split off the full-precision weights, so it needs them to start
(`needs_full_precision_init`); as its code does, the branches join after the activation and every linear layer of a
binarized level is binarized too (`BinaryLinear`). `bimacosr_inside` puts the branches inside the activation and
keeps the linears full precision, so it starts exactly equal to the twin. Both are plugged into the BI-DiffSR unit
and keep its timestep-aware parts where their paper has the plain counterpart: the TaR shift for BiDM's threshold
tau (BiMaCoSR's code has a shift it does not apply) and the TaA RPReLU for BiMaCoSR's RPReLU. So they start from
the same full-precision twin as the BI-DiffSR student (the same K groups).

`none` switches binarization off and keeps every parameter (shift, RPReLU, shortcut) and name: a `BiDiffSRUNet`
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
    activation_scale_map: bool = False  # BiDM: output x conv_k(mean_c |x|)
    scaled_shortcut: bool = False  # BiDM: + |lambda| x shortcut, wherever shapes differ too (pooled / 1x1 conv)
    matrix_branches: bool = False  # BiMaCoSR: + sparse and low-rank full-precision branches
    branches_after_activation: bool = False  # BiMaCoSR's placement: added after the RPReLU, on the raw input
    binary_linears: bool = False  # BiMaCoSR: the linear layers binarized too (with their own branches)
    sign_activations: bool = False  # forward of the input is exactly sign(u): it can run on packed bits

    @property
    def needs_full_precision_init(self) -> bool:
        """Its initialisation splits full-precision weights (BiMaCoSR): a student must start from its twin."""
        return self.matrix_branches


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


def _scaled_approx_sign_input(u: Tensor, conv: BinaryConv2d) -> Tensor:
    return u.detach().abs().mean(dim=1, keepdim=True) * ApproxSign.apply(u)


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
                  timestep_aware=True, sign_activations=True),
        Binarizer("bbcu", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, rprelu=True,
                  sign_activations=True),
        Binarizer("reactnet", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, rprelu=True,
                  conv_bias=True, shortcut_before_activation=True, sign_activations=True),
        Binarizer("xnor", _xnor_input, _xnor_weight, conv_bias=True),
        Binarizer("bnn", _clip_sign, _sign_weight, sign_activations=True),
        Binarizer("dorefa", _dorefa_input, _dorefa_weight),
        Binarizer("irnet", _irnet_input, _irnet_weight, needs_progress=True, sign_activations=True),
        Binarizer("bidm", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, timestep_aware=True,
                  activation_scale_map=True, scaled_shortcut=True, sign_activations=True),
        Binarizer("bimacosr", _scaled_approx_sign_input, _scaled_clip_sign_weight, learnable_shift=True, rprelu=True,
                  timestep_aware=True, matrix_branches=True, branches_after_activation=True, binary_linears=True),
        Binarizer("bimacosr_inside", _scaled_approx_sign_input, _scaled_clip_sign_weight, learnable_shift=True,
                  rprelu=True, timestep_aware=True, matrix_branches=True),
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
