"""Freed memory kept for reuse: with `keep_freed_memory`, a freed block's pages serve the next allocation instead of
being faulted in from the kernel again (measured in fresh processes: the setting is per process)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAULTS = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from pipeline.allocator import keep_freed_memory
kept = keep_freed_memory()
torch.ones(2**10).sum()  # torch's own first-use work, outside the count
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(1, 21):  # maps of 1, 2, ... 20 MiB, each written and freed before the next, as a forward's grow
    torch.empty(i * 2**18).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(keep: str) -> tuple[str, int]:
    """(whether the thresholds were set, page faults) in a fresh process with BIDISTILL_KEEP_FREED_MEMORY=keep."""
    # one thread: no worker's allocations in the count
    env = dict(os.environ, OMP_NUM_THREADS="1", BIDISTILL_KEEP_FREED_MEMORY=keep)
    out = subprocess.run([sys.executable, "-c", FAULTS.format(root=str(ROOT))], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.slow
@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_freed_activation_is_reused_instead_of_faulted_in_again():
    kept, with_setting = page_faults("1")
    opted_out, without = page_faults("0")
    assert kept == "True" and opted_out == "False"
    # glibc's default maps each block afresh (every page of the 210 MiB faulted in); kept, freed pages are reused
    assert without > 210 * 2**20 // 4096 * 0.9
    assert with_setting < without / 2
