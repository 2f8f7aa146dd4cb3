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

    python -m pipeline.import_official sr3 I640000_E37_gen.pth --config sr_sr3_16_128.json --out DIR

`sr3`: a released SR3 generator (Janspiry/Image-Super-Resolution-via-Iterative-Refinement; the GaussianDiffusion state
dict, its `denoise_fn.` denoiser and saved schedule buffers) becomes a teacher folder (`load_teacher(DIR)`,
`teacher.path` in a recipe): `SR3UNet` with the original layout (attention at the config's `attn_res`, no SiLU before
the per-block time projection) and the original process (`DDPMProcess` with images in [-1, 1], the noise level
sqrt(alpha_bar_t) as the network's time input, ancestral sampling through every step of the config's linear
schedule). Its JSON config (`--config`, with its // comments) is required: shapes give neither the attention
resolutions nor the schedule.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

KINDS = ("bidiffsr", "sr3")
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
    return convert(state, model, bidiffsr_name_map(dict(model.config)), source)


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


# ---- SR3 (Janspiry/Image-Super-Resolution-via-Iterative-Refinement) -------------------------------------------------

# Buffers the released GaussianDiffusion saves beside its denoiser: the noise schedule, rebuilt from the config.
SR3_SCHEDULE_BUFFERS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                        "posterior_mean_coef1", "posterior_mean_coef2"}


def _sr3_res_block(official: str, ours: str, state: dict) -> list[tuple[str, str, str]]:
    pairs = []
    for i, (norm, conv) in ((1, ("norm1", "conv1")), (2, ("norm2", "conv2"))):
        for p in ("weight", "bias"):
            pairs += [(f"{official}.block{i}.block.0.{p}", f"{ours}.{norm}.{p}", "copy"),
                      (f"{official}.block{i}.block.3.{p}", f"{ours}.{conv}.{p}", "copy")]
    pairs += [(f"{official}.noise_func.noise_func.0.{p}", f"{ours}.time_emb_proj.{p}", "copy") for p in ("weight", "bias")]
    if f"{official}.res_conv.weight" in state:
        pairs += [(f"{official}.res_conv.{p}", f"{ours}.conv_shortcut.{p}", "copy") for p in ("weight", "bias")]
    return pairs


def _sr3_attention(official: str, ours: str) -> list[tuple[str, str, str]]:
    return [(f"{official}.norm.weight", f"{ours}.group_norm.weight", "copy"),
            (f"{official}.norm.bias", f"{ours}.group_norm.bias", "copy"),
            (f"{official}.qkv.weight", f"{ours}.to_q.weight", "qkv:0"),
            (f"{official}.qkv.weight", f"{ours}.to_k.weight", "qkv:1"),
            (f"{official}.qkv.weight", f"{ours}.to_v.weight", "qkv:2"),
            (f"{official}.out.weight", f"{ours}.to_out.0.weight", "linear"),
            (f"{official}.out.bias", f"{ours}.to_out.0.bias", "copy")]


def sr3_name_map(config: dict, state: dict) -> list[tuple[str, str, str]]:
    """(official name, our SR3UNet name, how) in the official order: `downs` = [conv, level blocks (+ attention),
    Downsample, ...], `mid` = [block + attention, block], `ups` = per level from the coarsest, res_blocks + 1 blocks
    then Upsample; `how` is copy, linear (a 1x1 conv as a linear) or qkv:i (a third of the qkv 1x1 conv)."""
    levels, blocks, attn = len(config["channel_mults"]), config["num_res_blocks"], set(config["attention_levels"])
    pairs = [("noise_level_mlp.1.weight", "unet.time_embedding.linear_1.weight", "copy"),
             ("noise_level_mlp.1.bias", "unet.time_embedding.linear_1.bias", "copy"),
             ("noise_level_mlp.3.weight", "unet.time_embedding.linear_2.weight", "copy"),
             ("noise_level_mlp.3.bias", "unet.time_embedding.linear_2.bias", "copy"),
             ("downs.0.weight", "unet.conv_in.weight", "copy"), ("downs.0.bias", "unet.conv_in.bias", "copy")]
    n = 1
    for i in range(levels):
        for j in range(blocks):
            pairs += _sr3_res_block(f"downs.{n}.res_block", f"unet.down_blocks.{i}.resnets.{j}", state)
            if i in attn:
                pairs += _sr3_attention(f"downs.{n}.attn", f"unet.down_blocks.{i}.attentions.{j}")
            n += 1
        if i < levels - 1:
            pairs += [(f"downs.{n}.conv.{p}", f"unet.down_blocks.{i}.downsamplers.0.conv.{p}", "copy")
                      for p in ("weight", "bias")]
            n += 1
    pairs += _sr3_res_block("mid.0.res_block", "unet.mid_block.resnets.0", state)
    pairs += _sr3_attention("mid.0.attn", "unet.mid_block.attentions.0")
    pairs += _sr3_res_block("mid.1.res_block", "unet.mid_block.resnets.1", state)
    n = 0
    for k in range(levels):
        level = levels - 1 - k
        for j in range(blocks + 1):
            pairs += _sr3_res_block(f"ups.{n}.res_block", f"unet.up_blocks.{k}.resnets.{j}", state)
            if level in attn:
                pairs += _sr3_attention(f"ups.{n}.attn", f"unet.up_blocks.{k}.attentions.{j}")
            n += 1
        if level > 0:
            pairs += [(f"ups.{n}.conv.{p}", f"unet.up_blocks.{k}.upsamplers.0.conv.{p}", "copy") for p in ("weight", "bias")]
            n += 1
    pairs += [(f"final_conv.block.0.{p}", f"unet.conv_norm_out.{p}", "copy") for p in ("weight", "bias")]
    pairs += [(f"final_conv.block.3.{p}", f"unet.conv_out.{p}", "copy") for p in ("weight", "bias")]
    return pairs


def sr3_settings(options: dict) -> tuple[dict, dict, int]:
    """(SR3UNet config, DDPMProcess settings, scale) from a released SR3 JSON config."""
    try:
        model, unet = options["model"], options["model"]["unet"]
        image_size = int(model["diffusion"]["image_size"])
        schedule = model["beta_schedule"].get("val") or model["beta_schedule"]["train"]
        mults = tuple(unet["channel_multiplier"])
        config = dict(in_channels=unet.get("in_channel", 6), out_channels=unet.get("out_channel", 3),
                      base_channels=unet["inner_channel"], channel_mults=mults, num_res_blocks=unet["res_blocks"],
                      dropout=float(unet.get("dropout", 0.0)), norm_groups=unet.get("norm_groups") or 32,
                      attention_levels=tuple(i for i in range(len(mults)) if image_size // 2**i in set(unet["attn_res"])),
                      time_act_in_blocks=False)
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"the SR3 config lacks {err} (model.unet, model.diffusion.image_size, "
                              "model.beta_schedule)") from None
    if schedule.get("schedule") != "linear":
        raise CheckpointError(f"beta schedule {schedule.get('schedule')!r}: only the released 'linear' one is supported")
    steps = int(schedule["n_timestep"])
    process = dict(num_train_timesteps=steps, beta_start=float(schedule["linear_start"]),
                   beta_end=float(schedule["linear_end"]), data_range="signed", time_input="noise_level",
                   sampler="ddpm", num_inference_steps=steps)
    val = options.get("datasets", {}).get("val", {})
    scale = int(val["r_resolution"]) // int(val["l_resolution"]) if "r_resolution" in val else 0
    return config, process, scale


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


def import_sr3(checkpoint: str | Path, out: str | Path, config_file: str | Path | None, scale: int = 0) -> Path:
    """Convert a released SR3 generator (`I..._E..._gen.pth`) into a teacher folder (`load_teacher(out)`)."""
    from teachers import DDPMProcess, SR3UNet, Teacher

    if not config_file:
        raise CheckpointError("an SR3 import needs the release's JSON config (--config), e.g. sr_sr3_16_128.json: the "
                              "checkpoint's shapes do not give its attention resolutions or noise schedule")
    config, settings, found_scale = sr3_settings(_read_json_with_comments(config_file))
    scale = scale or found_scale
    if not scale:
        raise CheckpointError(f"{config_file} names no l_resolution / r_resolution: pass --scale")
    state = read_checkpoint(checkpoint)
    state = {k[len("denoise_fn."):] if k.startswith("denoise_fn.") else k: v for k, v in state.items()}
    process = DDPMProcess(**settings)
    if "betas" in state and not torch.allclose(state["betas"].double(),
                                               torch.linspace(settings["beta_start"], settings["beta_end"],
                                                              settings["num_train_timesteps"], dtype=torch.float64)):
        raise CheckpointError(f"{checkpoint}: its saved betas are not the config's linear schedule")
    try:
        unet = SR3UNet(**config)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{config_file}: the network settings do not build: {err}") from None
    convert(state, unet, sr3_name_map(config, state), str(checkpoint), ignore=SR3_SCHEDULE_BUFFERS)
    folder = Path(out)
    Teacher(unet, process, scale=scale).save_pretrained(folder)
    return folder


def _read_json_with_comments(path: str | Path) -> dict:
    """The released configs carry // comments; they are cut at '//' line by line, as the official reader does."""
    import json

    path = Path(path)
    try:
        text = "".join(line.split("//")[0] + "\n" for line in path.read_text().splitlines())
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read the config {path}: {err}") from None


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
    parser.add_argument("--config", default=None,
                        help="the release's config: BasicSR option YAML (bidiffsr, optional), JSON (sr3, required)")
    parser.add_argument("--scale", type=int, default=0, help="SR factor when the config does not give it (sr3)")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist)")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        parser.error(f"--out {args.out} exists; choose a new folder (nothing is overwritten)")
    try:
        if args.kind == "bidiffsr":
            folder = import_bidiffsr(args.checkpoint, args.out, args.config)
            loads = f"BiDiffSRPipeline.from_pretrained({str(folder)!r})"
        else:
            folder = import_sr3(args.checkpoint, args.out, args.config, args.scale)
            loads = f"teachers.load_teacher({str(folder)!r}), or teacher.path in a recipe"
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"imported {args.kind} {args.checkpoint} -> {folder} ({loads})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
