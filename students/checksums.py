"""Checksum manifests: `checksums.json` holds the sha256 of every file of a folder (a finished stage, a checkpoint, a
published model), written last, just before the folder is published under its final name, and verified before the
folder is used, so a truncated or corrupted file is named instead of silently loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHECKSUMS = "checksums.json"
UNCHECKED = {CHECKSUMS, "README.md"}  # a model card is documentation, edited on the Hub without touching the model


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: Path) -> None:
    """Record the sha256 of every file in `folder` (written last, just before the folder is published)."""
    folder = Path(folder)
    sums = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in UNCHECKED}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=2))


def damage(folder: Path, prefix: str = "") -> str:
    """Why `folder` cannot be trusted ('' when every file matches its recorded checksum); with `prefix`, only the
    files whose recorded name starts with it (`"unet/"`: one component of a published folder)."""
    folder = Path(folder)
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, json.JSONDecodeError):
        return f"{folder / CHECKSUMS} is missing or unreadable"
    for name, expected in sums.items():
        if not name.startswith(prefix) or Path(name).name in UNCHECKED:  # older manifests listed the card too
            continue
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        if sha256_file(file) != expected:
            return f"{file} does not match its checksum (truncated or corrupted)"
    return ""
