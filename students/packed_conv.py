"""Real 1-bit inference on CPU: binarized convolutions computed on packed sign bits (XNOR / popcount), equal to the
float emulation up to summation order, built from `students/csrc` on first use with a float-path fallback that never
breaks a user. What is fused, which binarizers it serves and how builds fall back: docs/packed_kernels.md.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).resolve().parent / "csrc" / "binary_conv.cpp"


class PackedKernelsUnavailable(RuntimeError):
    pass


def _cpu_tag() -> str:
    """A short digest of this CPU's model and features: built with -march=native, the library must not be reused
    from a shared cache by another kind of CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))][:2]
    except OSError:
        lines = []
    return hashlib.sha256("\n".join([platform.machine(), platform.processor(), *lines]).encode()).hexdigest()[:10]


# -fopenmp: at::parallel_for is inline OpenMP code; without it the kernels run on one thread. The OpenMP runtime
# resolves to the one torch already loaded (same soname), so torch.set_num_threads holds.
# -ffp-contract=off: the fused epilogue rounds each step as torch does unfused (no multiply-add becomes an FMA).
BUILDS = (("", ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"], ["-fopenmp"]),
          ("_noomp", ["-O3", "-march=native", "-ffp-contract=off"], []))


_loaded = None  # the extension, once loaded in this process


def kernels():
    """The compiled extension (built once per machine, source version and flags, then loaded from torch's cache, once
    per process: a second torch load of the same name rebuilds it under a new version); a PackedKernelsUnavailable
    saying why and what to install when no build works."""
    global _loaded
    if _loaded is None:
        _loaded = _load()
    return _loaded


def _load():
    from torch.utils.cpp_extension import load

    try:  # torch calls `ninja` from PATH; the pip package's binary sits beside this interpreter, maybe off PATH
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    except ImportError:
        pass
    extra = os.environ.get("BIDISTILL_PACKED_CFLAGS", "").split()
    tag = _cpu_tag() + (hashlib.sha256(" ".join(extra).encode()).hexdigest()[:6] if extra else "")
    failures = []
    for suffix, cflags, ldflags in BUILDS:
        try:
            module = load(name=f"bidistill_binary_conv_{tag}{suffix}", sources=[str(SOURCE)],
                          extra_cflags=cflags + extra, extra_ldflags=ldflags, verbose=False)
        except Exception as err:  # noqa: BLE001 - a compiler's failure comes in many types
            failures.append(f"{' '.join(cflags + extra)}: {str(err).strip().splitlines()[-1] if str(err) else err}")
            continue
        if failures:
            warnings.warn(f"the packed 1-bit kernels were built without OpenMP ({failures[0]}): they run on one "
                          "thread", stacklevel=2)
        return module
    raise PackedKernelsUnavailable(
        f"the packed 1-bit kernels could not be built from {SOURCE} (they need a C++ compiler and ninja, e.g. `apt "
        f"install g++` and `pip install ninja`): {failures[-1]}")


def pack_signs(x: Tensor, shift: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """(N, C, H, W) float, and optionally a per-channel shift (1 or N, C) added first -> the sign bits of x + shift
    (N, H, W, ceil(C / 64)) int64 and the non-zero plane (None without zeros)."""
    bits, nonzero = kernels().pack_signs(x.detach(), shift)
    return bits, (nonzero if nonzero is not None and nonzero.numel() else None)


def _table(rows: Tensor | None) -> Tensor | None:
    return None if rows is None else rows.detach().float().contiguous()


class PackedFilters:
    """A binarized conv's weight W_b = scale_o * sign pattern (and its bias), packed for `binary_conv2d`.

    Called on the unit's float32 input x, returns conv(sign(x + shift), W_b) + bias (N, O, Ho, Wo) in channels-last
    memory, followed by what the unit does next when given, fused into the kernel's output loop instead of separate
    passes over memory: `activation` (the RPReLU's shift_in, slope and shift_out tables), `residual` (added before
    the activation when `residual_first`, after it otherwise), `channel_add` (a res-block's time embedding) and
    `addend` (a map of the output's shape, added last). Per-channel tables are (1 or N, C).
    """

    def __init__(self, binary_weight: Tensor, bias: Tensor | None, stride: int, padding: int):
        w = binary_weight.detach().float().cpu()
        scale = w.abs().flatten(1).amax(dim=1)
        if not torch.equal(w.abs(), scale[:, None, None, None].expand_as(w) * (w != 0)):
            raise ValueError("the binarized weight has more than one magnitude per filter; it cannot run packed")
        bits, nonzero = pack_signs(w)  # (O, KH, KW, words): the filter's taps as pixels
        # in the kernel's layout once, here, rather than on every call
        self.bits = kernels().block_filters(bits)
        self.nonzero = None if nonzero is None else kernels().block_filters(nonzero)
        self.scale = scale.contiguous()
        self.bias = None if bias is None else bias.detach().float().cpu().contiguous()
        self.channels, self.stride, self.padding = w.shape[1], stride, padding

    def __call__(self, x: Tensor, shift: Tensor | None = None,
                 activation: tuple[Tensor, Tensor, Tensor] | None = None, residual: Tensor | None = None,
                 residual_first: bool = False, channel_add: Tensor | None = None,
                 addend: Tensor | None = None) -> Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise ValueError(f"packed 1-bit kernels run on the CPU in float32; this input is {x.dtype} on {x.device}")
        shift_in, slope, shift_out = (None, None, None) if activation is None else map(_table, activation)
        return kernels().binary_conv2d(x.detach(), _table(shift), self.bits, self.nonzero, self.scale, self.bias,
                                       self.channels, self.stride, self.padding, shift_in, slope, shift_out,
                                       None if residual is None else residual.detach(), residual_first,
                                       _table(channel_add), None if addend is None else addend.detach())


if __name__ == "__main__":  # `python -m students.packed_conv`: build the kernels ahead of their first use
    print(f"packed 1-bit kernels ready: {kernels().__file__}")
