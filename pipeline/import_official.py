"""Import officially released checkpoints into BiDistill folders that load with one line.

    python -m pipeline.import_official bidiffsr BI_DiffSR_x4.pth [--config test_BI_DiffSR_x4.yml] --out DIR

`bidiffsr`: a released BI-DiffSR generator (BasicSR `net_g_*.pth`, the repository zhengchen1999/BI-DiffSR) becomes a
published student folder: `BiDiffSRPipeline.from_pretrained(DIR)`, `BIDiffSRUNet.from_pretrained(DIR / "unet")`, and
`python -m pipeline.evaluate --student DIR ...` evaluates it. The two networks agree layer for layer; only names and
the layout of the per-timestep-group parameters differ (the official code keeps one module per TaR/TaA group, we
keep one (K, C) table), so the conversion is a renaming plus stacking, checked strictly: every released key is used
once, every parameter of ours is filled, every shape matches, or the error names the file and the first offending
key. EMA weights (`params_ema`) are preferred over `params` when both are present. The process is the official one
(`clip_sample = "official"`, its beta schedule), so an evaluation reproduces how the paper evaluated its weights.

The network settings come from the BasicSR option file given with `--config` (its `network_g` and `beta_schedule`);
without one they are read from the checkpoint's shapes, except `norm_groups` and `image_size`, which shapes do not
determine: the released x2/x4 values (16, 256) are used and the command says so.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

KINDS = ("bidiffsr",)
WRAPPERS = ("params_ema", "params", "state_dict", "model", "module")


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported; the message names the file and the key."""


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A released file -> a flat {name: tensor}: bare state dicts, or one under params_ema / params / state_dict /
    model / module (in that order of preference), with any `module.` prefix (DataParallel) removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

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
            raise CheckpointError(f"{path}: {name!r} is a {type(value).__name__}, not a tensor (is this a weights file?)")
        state[name[len("module."):] if name.startswith("module.") else name] = value
    return state


# ---- BI-DiffSR ---------------------------------------------------------------------------------------------------

def _binary_conv(official: str, ours: str, groups: int) -> list[tuple[str, str, str]]:
    """(official name, our name, how) for one BIConv unit: `how` is "copy" or "stack:<row>" (a row of a (K, C) table
    made from one (1, C, 1, 1) or (C,) tensor per timestep group)."""
    pairs = [(f"{official}.binary_conv.weight", f"{ours}.weight", "copy")]
    for g in range(groups):
        pairs += [(f"{official}.TaR.dynamic_move_{g}.bias", f"{ours}.shift.bias", f"stack:{g}"),
                  (f"{official}.TaA.dynamic_relu_{g}.pr_bias0.bias", f"{ours}.activation.shift_in", f"stack:{g}"),
                  (f"{official}.TaA.dynamic_relu_{g}.pr_prelu.weight", f"{ours}.activation.slope", f"stack:{g}"),
                  (f"{official}.TaA.dynamic_relu_{g}.pr_bias1.bias", f"{ours}.activation.shift_out", f"stack:{g}")]
    return pairs


def _conv(official: str, ours: str, binary: bool, groups: int) -> list[tuple[str, str, str]]:
    if binary:
        return _binary_conv(official, ours, groups)
    return [(f"{official}.weight", f"{ours}.weight", "copy"), (f"{official}.bias", f"{ours}.bias", "copy")]


def _res_block(official: str, ours: str, binary: bool, groups: int) -> list[tuple[str, str, str]]:
    """The official (BI_)ResnetBlock under `official` (its `res_block`) <-> our ResBlock under `ours`."""
    pairs = []
    for i, norm in ((1, "norm1"), (2, "norm2")):
        pairs += [(f"{official}.block{i}.block.0.weight", f"{ours}.{norm}.weight", "copy"),
                  (f"{official}.block{i}.block.0.bias", f"{ours}.{norm}.bias", "copy")]
        pairs += _conv(f"{official}.block{i}.conv", f"{ours}.conv{i}", binary, groups)
    pairs += [(f"{official}.timestep_func.1.weight", f"{ours}.time_proj.weight", "copy"),
              (f"{official}.timestep_func.1.bias", f"{ours}.time_proj.bias", "copy")]
    return pairs


def bidiffsr_name_map(config: dict) -> list[tuple[str, str, str]]:
    """Every (official name, our name, how) of a BI-DiffSR network with our `config` (BIDiffSRUNet's), following the
    official module order: `downs` = [conv_in, level 0 blocks, CP-Down, level 1 blocks, ...], `mid` = [block with
    attention, block], `ups` = per level from the coarsest: (CS-Fusion, block) x (res_blocks + 1), then CP-Up."""
    levels, blocks, groups = len(config["channel_mults"]), config["num_res_blocks"], config["timestep_groups"]
    fp_levels = {i for i in range(levels) if config["image_size"] // 2**i in set(config["fp_resolutions"])}
    pairs = [("timestep_level_mlp.1.weight", "time_embedding.linear_1.weight", "copy"),
             ("timestep_level_mlp.1.bias", "time_embedding.linear_1.bias", "copy"),
             ("timestep_level_mlp.3.weight", "time_embedding.linear_2.weight", "copy"),
             ("timestep_level_mlp.3.bias", "time_embedding.linear_2.bias", "copy"),
             ("downs.0.weight", "conv_in.weight", "copy"), ("downs.0.bias", "conv_in.bias", "copy")]
    n = 1
    for i in range(levels):
        for j in range(blocks):
            pairs += _res_block(f"downs.{n}.res_block", f"encoder.{i}.blocks.{j}", True, groups)
            n += 1
        if i < levels - 1:
            pairs += _binary_conv(f"downs.{n}.biconv1", f"encoder.{i}.down.conv_a", groups)
            pairs += _binary_conv(f"downs.{n}.biconv2", f"encoder.{i}.down.conv_b", groups)
            n += 1
    pairs += _res_block("mid.0.res_block", "mid_blocks.0", True, groups)
    pairs += [(f"mid.0.attn.{p}", f"mid_attention.{p}", "copy")
              for p in ("norm.weight", "norm.bias", "qkv.weight", "out.weight", "out.bias")]
    pairs += _res_block("mid.1.res_block", "mid_blocks.1", True, groups)
    n = 0
    for d in range(levels):
        level = levels - 1 - d
        binary = level not in fp_levels
        for j in range(blocks + 1):
            pairs += _conv(f"ups.{n}.biconv_1", f"decoder.{d}.fusions.{j}.conv_a", binary, groups)
            pairs += _conv(f"ups.{n}.biconv_2", f"decoder.{d}.fusions.{j}.conv_b", binary, groups)
            pairs += _res_block(f"ups.{n + 1}.res_block", f"decoder.{d}.blocks.{j}", binary, groups)
            n += 2
        if level > 0:
            pairs += _binary_conv(f"ups.{n}.biconv1", f"decoder.{d}.up.conv_a", groups)
            pairs += _binary_conv(f"ups.{n}.biconv2", f"decoder.{d}.up.conv_b", groups)
            n += 1
    pairs += [("final_conv.block.0.weight", "norm_out.weight", "copy"), ("final_conv.block.0.bias", "norm_out.bias", "copy"),
              ("final_conv.block.3.weight", "conv_out.weight", "copy"), ("final_conv.block.3.bias", "conv_out.bias", "copy")]
    return pairs


def bidiffsr_config(state: dict[str, Tensor], options: dict | None = None) -> tuple[dict, list[str]]:
    """Our BIDiffSRUNet config for a released checkpoint: from the BasicSR option file's `network_g` when given, else
    from the checkpoint's shapes. Returns (config, notes about values that were assumed)."""
    notes = []
    if options is not None:
        net = options.get("network_g", options)
        if net.get("attn_res"):
            raise CheckpointError(f"network_g.attn_res = {net['attn_res']}: attention outside the middle block is not "
                               "part of the released BI-DiffSR networks and not supported")
        return dict(in_channels=net.get("in_channel", 6), out_channels=net.get("out_channel", 3),
                    base_channels=net["inner_channel"], channel_mults=tuple(net["channel_mults"]),
                    num_res_blocks=net["res_blocks"], dropout=float(net.get("dropout", 0.0)),
                    norm_groups=net["norm_groups"], image_size=net["image_size"],
                    fp_resolutions=tuple(net.get("fp_res") or ()), num_train_timesteps=net.get("total_step", 2000),
                    timestep_groups=net.get("dynamic_group", 5)), notes
    try:
        first = state["downs.0.weight"]
    except KeyError:
        raise CheckpointError("not a BI-DiffSR generator: no 'downs.0.weight' (the first convolution)") from None
    base, in_channels = first.shape[0], first.shape[1]
    groups = len({m.group(1) for k in state if (m := re.search(r"TaR\.dynamic_move_(\d+)\.", k))})
    downs = sorted({int(m.group(1)) for k in state if (m := re.match(r"downs\.(\d+)\.", k))})
    widths, blocks, per_level = [], 0, 0
    for n in downs[1:]:
        if f"downs.{n}.biconv1.binary_conv.weight" in state:  # a CP-Down ends a level
            blocks, per_level = per_level, 0
            continue
        width = state[f"downs.{n}.res_block.timestep_func.1.weight"].shape[0]
        if per_level == 0:
            widths.append(width)
        per_level += 1
    blocks = blocks or per_level
    ups = sorted({int(m.group(1)) for k in state if (m := re.match(r"ups\.(\d+)\.", k))})
    image_size, fp = 256, []
    for d in range(len(widths)):
        fusion = ups[d * (2 * (blocks + 1) + 1)]
        if f"ups.{fusion}.biconv_1.weight" in state:  # a full-precision CS-Fusion
            fp.append(image_size // 2 ** (len(widths) - 1 - d))
    notes.append("norm_groups = 16 and image_size = 256 assumed (the released x2/x4 settings; the checkpoint's shapes "
                 "do not fix them): pass --config with the BasicSR option file to read them")
    return dict(in_channels=in_channels, out_channels=state["final_conv.block.3.weight"].shape[0], base_channels=base,
                channel_mults=tuple(w // base for w in widths), num_res_blocks=blocks, dropout=0.0, norm_groups=16,
                image_size=image_size, fp_resolutions=tuple(sorted(fp, reverse=True)), num_train_timesteps=2000,
                timestep_groups=groups), notes


def convert_bidiffsr(state: dict[str, Tensor], config: dict, source: str = "checkpoint"):
    """A BIDiffSRUNet holding the released weights; strict: unused, missing or misshapen keys are errors."""
    from students.bidiffsr import BIDiffSRUNet

    try:
        model = BIDiffSRUNet(**config)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: the network settings do not build: {err}") from None
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    used = set()
    for official, name, how in bidiffsr_name_map(dict(model.config)):
        if official not in state:
            raise CheckpointError(f"{source}: missing key {official!r} (needed for {name}); the checkpoint does not match "
                               "the network settings (check --config)")
        if name not in ours:
            raise CheckpointError(f"{source}: {official!r} maps to {name!r}, which this network does not have")
        value, used = state[official], used | {official}
        if how == "copy":
            if value.shape != ours[name].shape:
                raise CheckpointError(f"{source}: {official!r} has shape {tuple(value.shape)} but {name} needs "
                                   f"{tuple(ours[name].shape)} (check --config)")
            out[name] = value.float()
        else:
            row = int(how.split(":")[1])
            table = out.setdefault(name, torch.full_like(ours[name], float("nan")))
            if value.numel() != table.shape[1]:
                raise CheckpointError(f"{source}: {official!r} has {value.numel()} values but {name} has rows of "
                                   f"{table.shape[1]}")
            table[row] = value.reshape(-1).float()
    unused = sorted(set(state) - used)
    if unused:
        raise CheckpointError(f"{source}: unexpected key {unused[0]!r} ({len(unused)} unused in all): the checkpoint has "
                           "parts this network does not (check --config, or the KIND)")
    missing = sorted(set(ours) - set(out))
    if missing:
        raise CheckpointError(f"{source}: nothing in the checkpoint fills {missing[0]!r} ({len(missing)} in all)")
    model.load_state_dict(out, strict=True)
    return model.eval()


def import_bidiffsr(checkpoint: str | Path, out: str | Path, config_file: str | Path | None = None) -> Path:
    """Convert a released BI-DiffSR generator and write a published student folder at `out`; returns it."""
    from pipeline.publish import write_model_folder
    from teachers import DDPMProcess

    options = _read_options(config_file) if config_file else None
    state = read_checkpoint(checkpoint)
    config, notes = bidiffsr_config(state, options)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    model = convert_bidiffsr(state, config, source=str(checkpoint))
    schedule = (options or {}).get("beta_schedule", {})
    process = DDPMProcess(num_train_timesteps=int(schedule.get("n_timestep", config["num_train_timesteps"])),
                          beta_start=float(schedule.get("linear_start", 1e-6)),
                          beta_end=float(schedule.get("linear_end", 1e-2)),
                          num_inference_steps=int(schedule.get("num_inference_steps", 50)), clip_sample="official")
    scale = int((options or {}).get("scale", 4))
    recipe = {"imported": {"kind": "bidiffsr", "checkpoint": str(checkpoint), "config": str(config_file or "")}}
    return write_model_folder(model, process, scale, Path(out), recipe=recipe)


def _read_options(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    try:
        options = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"cannot read the option file {path}: {err}") from None
    if not isinstance(options, dict) or "network_g" not in options:
        raise CheckpointError(f"{path} is not a BasicSR option file (no network_g section)")
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.import_official", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("kind", choices=KINDS, help="what the checkpoint is")
    parser.add_argument("checkpoint", help="the released weights (.pth, .pt or .safetensors)")
    parser.add_argument("--config", default=None, help="the release's option file (BasicSR YAML for bidiffsr)")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist)")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        parser.error(f"--out {args.out} exists; choose a new folder (nothing is overwritten)")
    try:
        folder = import_bidiffsr(args.checkpoint, args.out, args.config)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"imported {args.kind} {args.checkpoint} -> {folder} (BiDiffSRPipeline.from_pretrained({str(folder)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
