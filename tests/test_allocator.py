"""Freed memory kept for reuse: with `keep_freed_memory`, making and freeing a res-block's maps again and again stops
page-faulting them in from the kernel (measured in fresh processes: the setting is per process)."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAULTS = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from pipeline.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
x = torch.randn(1, 32, 128, 128)  # a few maps of 2 and 4 MiB, made and freed as a res-block does
norm = torch.nn.GroupNorm(8, 32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.no_grad():
    for _ in range(20):
        h = torch.nn.functional.silu(norm(x))
        h = torch.cat([h, x], 1)
        h = h[:, :32] * 2.0 + x
        del h
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS.format(root=str(ROOT)), mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_freed_activation_is_reused_instead_of_faulted_in_again():
    kept, with_setting = page_faults("keep")
    _, without = page_faults("default")
    assert kept == "True"
    assert without > 20 * 2**21 // 4096  # glibc's default: pages come back from the kernel on every pass
    assert with_setting < without / 4
