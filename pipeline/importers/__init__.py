"""Importers of released checkpoints, one self-registering file each (`register_importer`), and what they share:
reading released checkpoint files and filling a model from one, strictly. The command is `pipeline.importers.command`
(`python -m pipeline.importers KIND CHECKPOINT --out DIR`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor

from pipeline.atomic import folder_written_whole

WRAPPERS = ("params_ema", "params", "state_dict", "model", "module")


@dataclass(frozen=True)
class Importer:
    """One kind of released checkpoint the import command converts."""

    kind: str  # the command's KIND
    what: str  # the release it reads, for --help
    loads: str  # how the written folder loads, with {folder} for its path
    options: tuple[str, ...]  # the optional command-line settings it takes besides --config and --scale
    run: Callable[[argparse.Namespace], tuple[Path, list[str]]]  # parsed command line -> (written folder, notes)


IMPORTERS: dict[str, Importer] = {}


def register_importer(importer: Importer) -> Importer:
    """Make `importer` one of the command's kinds (each importer module calls this when imported)."""
    IMPORTERS[importer.kind] = importer
    return importer


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported; the message names the file and the key."""


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A released file -> a flat {name: tensor}: bare state dicts, or one under params_ema / params / state_dict /
    model / module (in that order of preference), with the `module.` (DataParallel) and `_orig_mod.` (torch.compile)
    prefixes removed, as the official loaders remove them. A tensor with NaN or infinite values is refused by name."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            data = load_file(path)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, non-tensor payloads
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict")
    for wrapper in WRAPPERS:
        if wrapper in data and isinstance(data[wrapper], dict):
            data = data[wrapper]
            break
    state = {}
    for name, value in data.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: {name!r} is a {type(value).__name__}, not a tensor (is this a weights "
                                  "file?)")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: {name!r} holds NaN or infinite values; this checkpoint is damaged")
        for prefix in ("module.", "_orig_mod."):
            name = name[len(prefix):] if name.startswith(prefix) else name
        state[name] = value
    return state


def copied(official: str, ours: str, params: tuple[str, ...] = ("weight", "bias")) -> list[tuple[str, str, str]]:
    """(official name, our name, "copy") for each parameter of one module."""
    return [(f"{official}.{p}", f"{ours}.{p}", "copy") for p in params]


def sr3_stem(time_mlp: str, ours: str = "") -> list[tuple[str, str, str]]:
    """The time MLP (`<time_mlp>.1`, `<time_mlp>.3`: Linear, Swish, Linear after the sinusoidal code) and the first
    conv (`downs.0`) that SR3 and BI-DiffSR (built on SR3's code) share, onto diffusers' names under `ours`."""
    return (copied(f"{time_mlp}.1", f"{ours}time_embedding.linear_1")
            + copied(f"{time_mlp}.3", f"{ours}time_embedding.linear_2") + copied("downs.0", f"{ours}conv_in"))


def convert(state: dict[str, Tensor], model, pairs: list[tuple[str, str, str]], source: str,
            ignore: set[str] = frozenset()):
    """Fill `model` from `state` by `pairs` (official name, our name, how), strictly: every released key but those
    in `ignore` used, every parameter filled, every shape checked; errors name `source` and the key."""
    ours, out, used = model.state_dict(), {}, set(ignore) & set(state)
    for official, name, how in pairs:
        if official not in state:
            raise CheckpointError(f"{source}: missing key {official!r} (needed for {name}); the checkpoint does not "
                                  "match the network settings (check the config)")
        if name not in ours:
            raise CheckpointError(f"{source}: {official!r} maps to {name!r}, which this network does not have")
        value, used = state[official], used | {official}
        if how.startswith("stack:"):
            row = int(how.split(":")[1])
            table = out.setdefault(name, torch.full_like(ours[name], float("nan")))
            if value.numel() != table.shape[1]:
                raise CheckpointError(f"{source}: {official!r} has {value.numel()} values but {name} has rows of "
                                      f"{table.shape[1]}")
            table[row] = value.reshape(-1).float()
            continue
        if how.startswith("qkv:"):
            part = int(how.split(":")[1])
            value = value.reshape(3, value.shape[0] // 3, -1)[part] if value.shape[0] % 3 == 0 else value
        elif how == "linear":
            value = value.reshape(value.shape[0], -1)
        if value.shape != ours[name].shape:
            raise CheckpointError(f"{source}: {official!r} has shape {tuple(value.shape)} but {name} needs "
                                  f"{tuple(ours[name].shape)} (check the config)")
        out[name] = value.float()
    unused = sorted(set(state) - used)
    if unused:
        raise CheckpointError(f"{source}: unexpected key {unused[0]!r} ({len(unused)} unused in all): the checkpoint "
                              "has parts this network does not (check the config, or the KIND)")
    missing = sorted(set(ours) - set(out))
    if missing:
        raise CheckpointError(f"{source}: nothing in the checkpoint fills {missing[0]!r} ({len(missing)} in all)")
    model.load_state_dict(out, strict=True)
    return model.eval()


def save_teacher(teacher, out: str | Path) -> Path:
    """Write an imported teacher's folder whole (`pipeline.atomic`): an interrupted import leaves no half-written
    folder under the name."""
    with folder_written_whole(out) as tmp:
        teacher.save_pretrained(tmp)
    return Path(out)


def read_yaml(path: str | Path, section: str) -> dict:
    """A released YAML option file, which must have `section` at its top level; errors name the file."""
    path = Path(path)
    try:
        options = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"cannot read the option file {path}: {err}") from None
    if not isinstance(options, dict) or section not in options:
        raise CheckpointError(f"{path} is not the release's option file (no {section} section)")
    return options
