"""Recipes for tests, built from Python tables (`write_recipe`) instead of inline TOML strings."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image

# The tiny student (conftest.TINY_STUDENT) as a recipe's student.unet.
TINY_UNET = {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1, "norm_groups": 4, "image_size": 32,
             "fp_resolutions": [32]}


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # TOML basic strings take JSON's escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def toml_text(tables: dict, prefix: str = "") -> str:
    """TOML for nested dicts: dicts become [tables], lists of dicts [[arrays of tables]]."""
    lines, nested = [], []
    for key, value in tables.items():
        if isinstance(value, dict):
            nested.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in nested:
        name = f"{prefix}.{key}" if prefix else key
        for table in value if isinstance(value, list) else [value]:
            out += f"[[{name}]]\n" if isinstance(value, list) else f"[{name}]\n"
            out += toml_text(table, name)
    return out


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied: tables merge key by key, other values replace, None removes the key."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def training_folder(folder: Path, size: int = 64) -> Path:
    """A folder with one size x size training photo."""
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.iterdir()):
        Image.new("RGB", (size, size), "gray").save(folder / "photo.png")
    return folder


def write_recipe(folder: Path, name: str = "r", **tables) -> Path:
    """<folder>/<name>.toml: the tiny student trained directly for 3 steps into <folder>/<name>, on one 64x64 photo
    (<folder>/train) unless `data` names a training folder; `tables` are merged in (`stages=[...]` replaces the
    stages, `data={"val": ...}` adds to [data])."""
    base = {"run": {"output_dir": folder / name, "log_with": []}, "data": {"patch_size": 32, "num_workers": 0},
            "student": {"unet": TINY_UNET}, "stages": [{"type": "direct", "steps": 3}]}
    recipe = merged(base, tables)
    if "train" not in recipe["data"]:
        recipe["data"]["train"] = training_folder(folder / "train")
    path = folder / f"{name}.toml"
    path.write_text(toml_text(recipe))
    return path
