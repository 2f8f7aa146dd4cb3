"""Finding and opening a user's image files, without torch (so commands can check their arguments before the slow
imports): the image suffixes, what opening an image can raise, the files of a folder and of a training tree."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image


class DataError(ValueError):
    """Training or validation data that cannot be used; the message names the folder, dataset or file."""


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)  # what opening a user's image can raise


def training_image_files(folder: str | Path) -> list[Path]:
    """The image files under a training folder, in subfolders too (as datasets' imagefolder finds them), sorted;
    regular files only. A name that is not UTF-8 is a DataError naming it (datasets cannot carry it)."""
    files = sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    for f in files:
        try:
            str(f).encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{folder}: the file name {os.fsencode(f)!r} is not UTF-8; rename it") from None
    return files


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    if not Path(folder).is_dir():
        raise DataError(f"folder {folder} does not exist")
    # regular files only: a named pipe called x.png would block the first read forever
    return sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
