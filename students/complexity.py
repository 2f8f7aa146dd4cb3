"""Params and OPs by the BI-DiffSR paper's counting rule (the command that prints them: `pipeline.complexity`).

Params = (real-valued weights of binarized convs) / 32 + every other parameter.
OPs    = full-precision OPs + (MACs of binarized convs) / 64, where full-precision OPs are conv and linear MACs,
         2 N^2 C per self-attention over N positions, 5 x input elements per GroupNorm and the output elements of
         every nearest-neighbour upsampling; element-wise work (adds, activations, shifts, softmax, pixel
         (un)shuffle) is free. Counted on one forward pass at batch 1 (the paper: output 3 x 256 x 256).

OPs are counted with forward hooks on a model on the meta device, so the full-size count costs no compute.
Any leaf module holding parameters that no rule covers is an error rather than a silent zero.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.upsampling import Upsample2D
from torch import Tensor, nn

from students.bidiffsr import BiDiffSRUNet, SelfAttention
from students.binary import BinarizedWeight, BinaryConv2d, BinaryLinear, MatrixBranches
from students.timestep import TimestepRPReLU, TimestepShift

BINARY_PARAM_DIVISOR = 32
BINARY_OP_DIVISOR = 64

# handler(module, inputs, output) -> (bucket, count); buckets are summed into fp OPs except "binary_macs".
OpCounter = Callable[[nn.Module, tuple, Tensor], tuple[str, int]]
OP_COUNTERS: dict[type, OpCounter] = {}
FREE_PARAMETRIC_LEAVES: set[type] = {TimestepShift, TimestepRPReLU}  # element-wise: no OPs by the rule


def register_op_counter(cls: type) -> Callable[[OpCounter], OpCounter]:
    """Decorator: count OPs for modules of `cls` (and subclasses). Teachers register theirs the same way."""

    def wrap(fn: OpCounter) -> OpCounter:
        OP_COUNTERS[cls] = fn
        return fn

    return wrap


def conv_macs(module: nn.Module, output: Tensor) -> int:
    kh, kw = (module.kernel_size, module.kernel_size) if isinstance(module.kernel_size, int) else module.kernel_size
    groups = getattr(module, "groups", 1)
    return module.in_channels // groups * kh * kw * output.numel()


@register_op_counter(BinaryConv2d)
def _binary_conv(module, inputs, output):
    return ("binary_macs" if module.binarizer.binary else "conv_macs"), conv_macs(module, output)


@register_op_counter(BinaryLinear)
def _binary_linear(module, inputs, output):
    return "binary_macs", module.in_features * output.numel()


@register_op_counter(MatrixBranches)
def _matrix_branches(module, inputs, output):
    """BiMaCoSR's rule: the sparse branch costs its non-zeros and the low-rank one r (Cin + Cout) MACs per output
    position, both in full precision (the dense 1x1 map we run is an implementation detail)."""
    positions = output.numel() // module.out_channels
    per_position = module.sparse_values.numel() + module.rank * (module.in_channels + module.out_channels)
    return "branch_macs", per_position * positions


@register_op_counter(nn.Conv2d)
def _conv(module, inputs, output):
    return "conv_macs", conv_macs(module, output)


@register_op_counter(nn.Linear)
def _linear(module, inputs, output):
    return "linear_macs", module.in_features * output.numel()


@register_op_counter(nn.GroupNorm)
def _group_norm(module, inputs, output):
    return "groupnorm_ops", 5 * inputs[0].numel()


@register_op_counter(nn.Upsample)
def _upsample(module, inputs, output):
    if module.mode != "nearest":
        raise NotImplementedError(f"OPs rule covers nearest upsampling only, not mode={module.mode!r}")
    return "upsample_ops", output.numel()


def _attention_ops(module, inputs, output):
    """scores and weighted sum: 2 N^2 C for N = H * W positions of C channels (summed over heads)."""
    b, c, h, w = inputs[0].shape
    return "attention_ops", 2 * b * (h * w) ** 2 * c


def _register_library_modules() -> None:
    register_op_counter(SelfAttention)(_attention_ops)
    register_op_counter(Attention)(_attention_ops)  # diffusers' spatial attention (SR3 teacher), 4-D input

    @register_op_counter(Upsample2D)
    def _upsample2d(module, inputs, output):
        # nearest x2 interpolation output (the following conv is a child module, counted by its own hook)
        if module.use_conv_transpose or module.interpolate is False:
            raise NotImplementedError("OPs rule covers interpolating Upsample2D only")
        return "upsample_ops", 4 * inputs[0].numel()


_register_library_modules()


def _counter_for(module: nn.Module) -> OpCounter | None:
    for cls in type(module).__mro__:
        if cls in OP_COUNTERS:
            return OP_COUNTERS[cls]
    return None


@dataclass
class Complexity:
    """Counts for one model; `params` and `ops` apply the paper's rule."""

    binary_params: int
    fp_params: int
    ops_by_kind: dict[str, int] = field(default_factory=dict)
    ops_by_component: dict[str, float] = field(default_factory=dict)

    @property
    def raw_params(self) -> int:
        return self.binary_params + self.fp_params

    @property
    def params(self) -> float:
        return self.binary_params / BINARY_PARAM_DIVISOR + self.fp_params

    @property
    def binary_macs(self) -> int:
        return self.ops_by_kind.get("binary_macs", 0)

    @property
    def fp_ops(self) -> int:
        return sum(v for k, v in self.ops_by_kind.items() if k != "binary_macs")

    @property
    def ops(self) -> float:
        return self.fp_ops + self.binary_macs / BINARY_OP_DIVISOR


def binary_weights(model: nn.Module) -> list[nn.Parameter]:
    """The real-valued latent weights that are stored and used as 1 bit."""
    return [m.weight for m in model.modules() if isinstance(m, BinarizedWeight) and m.binarizer.binary]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(binary weights, full-precision parameters)."""
    binary = sum(p.numel() for p in binary_weights(model))
    return binary, sum(p.numel() for p in model.parameters()) - binary


def measure(model: nn.Module, height: int = 256, width: int = 256, forward: Callable | None = None) -> Complexity:
    """Params and OPs of one forward pass at batch 1 and output size (height, width).

    `forward(model, x, cond, t)` runs the model (default: the denoiser call); the model may live on the meta device.
    """
    binary, fp = count_params(model)
    by_kind: dict[str, int] = defaultdict(int)
    by_component: dict[str, float] = defaultdict(float)
    handles = []

    def hook_for(name: str, counter: OpCounter):
        parts = name.split(".")
        component = ".".join(parts[:2]) if name.startswith(("encoder.", "decoder.")) else parts[0]

        def hook(module, inputs, output):
            kind, n = counter(module, inputs, output)
            by_kind[kind] += n
            by_component[component] += n / BINARY_OP_DIVISOR if kind == "binary_macs" else n

        return hook

    for name, module in model.named_modules():
        counter = _counter_for(module)
        if counter is not None:
            handles.append(module.register_forward_hook(hook_for(name, counter)))
        elif not any(True for _ in module.children()) and any(True for _ in module.parameters(recurse=False)):
            if type(module) not in FREE_PARAMETRIC_LEAVES:
                for h in handles:
                    h.remove()
                raise NotImplementedError(f"no OPs rule for module {name!r} of type {type(module).__name__}")
    try:
        device = next(model.parameters()).device
        x = torch.zeros(1, 3, height, width, device=device)
        t = torch.zeros(1, dtype=torch.long, device=device)
        with torch.no_grad():
            (forward or (lambda m, x, c, t: m(x, c, t)))(model, x, x, t)
    finally:
        for h in handles:
            h.remove()
    return Complexity(binary, fp, dict(by_kind), dict(by_component))


def measure_student(config: dict | None = None, height: int = 256, width: int = 256, **overrides) -> Complexity:
    """Build a BI-DiffSR student on the meta device from a config (default: the paper's; a saved config.json's
    private keys are ignored) and measure it."""
    with torch.device("meta"):
        model = BiDiffSRUNet.from_config({**(config or {}), **overrides}).eval()
    return measure(model, height, width)


def format_params(value: float) -> str:
    return f"{value / 1e6:.2f}M"


def format_ops(value: float) -> str:
    return f"{value / 1e9:.2f}G"
