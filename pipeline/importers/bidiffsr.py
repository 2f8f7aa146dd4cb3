"""Released BI-DiffSR generators (zhengchen1999/BI-DiffSR, BasicSR `net_g_*.pth`) -> published student folders.

The released network and `BiDiffSRUNet` agree layer for layer; the conversion renames, and stacks the official
per-group TaR/TaA modules into our (K, C) tables. Settings come from the BasicSR option file, or from the shapes with
the released norm_groups / image_size assumed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from torch import Tensor

from pipeline.importers import (CheckpointError, Importer, convert, copied, read_checkpoint, read_yaml,
                                register_importer, sr3_stem)
from pipeline.publish import write_model_folder
from students.bidiffsr import BiDiffSRUNet
from teachers import DDPMProcess


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
    return copied(official, ours)


def _res_block(official: str, ours: str, binary: bool, groups: int) -> list[tuple[str, str, str]]:
    """The official (BI_)ResnetBlock under `official` (its `res_block`) <-> our ResBlock under `ours`."""
    pairs = []
    for i, norm in ((1, "norm1"), (2, "norm2")):
        pairs += copied(f"{official}.block{i}.block.0", f"{ours}.{norm}")
        pairs += _conv(f"{official}.block{i}.conv", f"{ours}.conv{i}", binary, groups)
    pairs += copied(f"{official}.timestep_func.1", f"{ours}.time_proj")
    return pairs


def bidiffsr_name_map(config: dict) -> list[tuple[str, str, str]]:
    """Every (official name, our name, how) of a BI-DiffSR network with our `config` (BiDiffSRUNet's), following the
    official module order: `downs` = [conv_in, level 0 blocks, CP-Down, level 1 blocks, ...], `mid` = [block with
    attention, block], `ups` = per level from the coarsest: (CS-Fusion, block) x (res_blocks + 1), then CP-Up."""
    levels, blocks, groups = len(config["channel_mults"]), config["num_res_blocks"], config["timestep_groups"]
    fp_levels = {i for i in range(levels) if config["image_size"] // 2**i in set(config["fp_resolutions"])}
    pairs = sr3_stem("timestep_level_mlp")
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
    pairs += copied("final_conv.block.0", "norm_out") + copied("final_conv.block.3", "conv_out")
    return pairs


def bidiffsr_config(state: dict[str, Tensor], options: dict | None = None) -> tuple[dict, list[str]]:
    """Our BiDiffSRUNet config for a released checkpoint: from the BasicSR option file's `network_g` when given, else
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
    """A BiDiffSRUNet holding the released weights; strict: unused, missing or misshapen keys are errors."""
    try:
        model = BiDiffSRUNet(**config)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: the network settings do not build: {err}") from None
    return convert(state, model, bidiffsr_name_map(dict(model.config)), source)


def import_bidiffsr(checkpoint: str | Path, out: str | Path, config_file: str | Path | None = None) -> Path:
    """Convert a released BI-DiffSR generator and write a published student folder at `out`; returns it."""
    options = read_yaml(config_file, "network_g") if config_file else None
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


register_importer(Importer(
    "bidiffsr", "a released BI-DiffSR generator (zhengchen1999/BI-DiffSR, BasicSR net_g_*.pth)",
    "BiDiffSRPipeline.from_pretrained({folder!r})", (),
    lambda args: (import_bidiffsr(args.checkpoint, args.out, args.config), [])))
