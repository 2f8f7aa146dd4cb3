"""The binarizers a student can be built with, selected by name: BI-DiffSR and the baselines of its Table 2.

Each is a `Binarizer` (how a `BinaryConv2d` quantizes its input and weight, which extras the unit has) registered by
`register_binarizer`. Each method's definitions, gradients and sources: docs/binarizers.md.
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


BINARIZERS: dict[str, Binarizer] = {}


def register_binarizer(binarizer: Binarizer) -> Binarizer:
    """Make `binarizer` selectable by its name (student.unet.binarizer); a module defining one calls this."""
    if binarizer.name in BINARIZERS:
        raise ValueError(f"a binarizer named {binarizer.name!r} is registered already")
    BINARIZERS[binarizer.name] = binarizer
    return binarizer


register_binarizer(Binarizer("bidiffsr", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, rprelu=True,
                             timestep_aware=True, sign_activations=True))
register_binarizer(Binarizer("bbcu", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, rprelu=True,
                             sign_activations=True))
register_binarizer(Binarizer("reactnet", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, rprelu=True,
                             conv_bias=True, shortcut_before_activation=True, sign_activations=True))
register_binarizer(Binarizer("xnor", _xnor_input, _xnor_weight, conv_bias=True))
register_binarizer(Binarizer("bnn", _clip_sign, _sign_weight, sign_activations=True))
register_binarizer(Binarizer("dorefa", _dorefa_input, _dorefa_weight))
register_binarizer(Binarizer("irnet", _irnet_input, _irnet_weight, needs_progress=True, sign_activations=True))
register_binarizer(Binarizer("bidm", _approx_sign, _scaled_clip_sign_weight, learnable_shift=True, timestep_aware=True,
                             activation_scale_map=True, scaled_shortcut=True, sign_activations=True))
register_binarizer(Binarizer("bimacosr", _scaled_approx_sign_input, _scaled_clip_sign_weight, learnable_shift=True,
                             rprelu=True, timestep_aware=True, matrix_branches=True, branches_after_activation=True,
                             binary_linears=True))
register_binarizer(Binarizer("bimacosr_inside", _scaled_approx_sign_input, _scaled_clip_sign_weight,
                             learnable_shift=True, rprelu=True, timestep_aware=True, matrix_branches=True))
register_binarizer(Binarizer("none", _identity, _identity, learnable_shift=True, rprelu=True, timestep_aware=True,
                             binary=False))


def get_binarizer(name: str, field: str = "binarizer") -> Binarizer:
    """The binarizer called `name`; an unknown name is an error naming the field and the choices."""
    try:
        return BINARIZERS[name]
    except KeyError:
        raise ValueError(
            f"{field}={name!r} is not a known binarizer; choose one of: {', '.join(sorted(BINARIZERS))}"
        ) from None
