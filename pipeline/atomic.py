"""Folders written whole: a folder is written under a hidden `.NAME.partial` sibling and renamed onto its final name
only once complete, so a crash or a kill never leaves a half-written model, stage, checkpoint or import under the
name (a rename is atomic on one filesystem; a stale `.partial` is cleared by the next write)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_sibling(final: Path) -> Path:
    return final.parent / f".{final.name}.partial"


def replace_folder(tmp: Path, final: Path) -> None:
    """Put a fully written folder under its final name, replacing what was there."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextmanager
def folder_written_whole(final: str | Path) -> Iterator[Path]:
    """Yield the (cleared, not yet created) partial folder to write `final` into; it replaces `final` when the block
    ends without an error, and is left for the next write to clear when it raises."""
    final = Path(final)
    tmp = partial_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    follow_umask(tmp)
    replace_folder(tmp, final)


def follow_umask(folder: Path) -> None:
    """Give every file under `folder` the mode a new file gets (safetensors writes its files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~mask)
