"""Released SR3 generators (Janspiry/Image-Super-Resolution-via-Iterative-Refinement, `I*_gen.pth`) -> teacher folders
with the original network (`SR3UNet(attention_levels, time_act_in_blocks=False)`) and process (`DDPMProcess` with
signed data, noise-level time input and the ancestral sampler)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.importers import (CheckpointError, Importer, convert, copied, read_checkpoint, register_importer,
                                save_teacher, sr3_stem)
from teachers import DDPMProcess, SR3UNet, Teacher


# Buffers the released GaussianDiffusion saves beside its denoiser: the noise schedule, rebuilt from the config.
SR3_SCHEDULE_BUFFERS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                        "posterior_mean_coef1", "posterior_mean_coef2"}


def _sr3_res_block(official: str, ours: str, state: dict) -> list[tuple[str, str, str]]:
    pairs = []
    for i in (1, 2):  # Block: GroupNorm, Swish, Dropout, Conv
        pairs += copied(f"{official}.block{i}.block.0", f"{ours}.norm{i}")
        pairs += copied(f"{official}.block{i}.block.3", f"{ours}.conv{i}")
    pairs += copied(f"{official}.noise_func.noise_func.0", f"{ours}.time_emb_proj")
    if f"{official}.res_conv.weight" in state:
        pairs += copied(f"{official}.res_conv", f"{ours}.conv_shortcut")
    return pairs


def _sr3_attention(official: str, ours: str) -> list[tuple[str, str, str]]:
    return copied(f"{official}.norm", f"{ours}.group_norm") + [
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
    pairs = sr3_stem("noise_level_mlp", "unet.")
    n = 1
    for i in range(levels):
        for j in range(blocks):
            pairs += _sr3_res_block(f"downs.{n}.res_block", f"unet.down_blocks.{i}.resnets.{j}", state)
            if i in attn:
                pairs += _sr3_attention(f"downs.{n}.attn", f"unet.down_blocks.{i}.attentions.{j}")
            n += 1
        if i < levels - 1:
            pairs += copied(f"downs.{n}.conv", f"unet.down_blocks.{i}.downsamplers.0.conv")
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
            pairs += copied(f"ups.{n}.conv", f"unet.up_blocks.{k}.upsamplers.0.conv")
            n += 1
    pairs += copied("final_conv.block.0", "unet.conv_norm_out") + copied("final_conv.block.3", "unet.conv_out")
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
                      attention_levels=tuple(i for i in range(len(mults))
                                             if image_size // 2**i in set(unet["attn_res"])),
                      time_act_in_blocks=False)
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"the SR3 config lacks {err} (model.unet, model.diffusion.image_size, "
                              "model.beta_schedule)") from None
    if schedule.get("schedule") != "linear":
        raise CheckpointError(f"beta schedule {schedule.get('schedule')!r}: only the released 'linear' one is "
                              "supported")
    steps = int(schedule["n_timestep"])
    process = dict(num_train_timesteps=steps, beta_start=float(schedule["linear_start"]),
                   beta_end=float(schedule["linear_end"]), data_range="signed", time_input="noise_level",
                   sampler="ddpm", num_inference_steps=steps)
    val = options.get("datasets", {}).get("val", {})
    scale = int(val["r_resolution"]) // int(val["l_resolution"]) if "r_resolution" in val else 0
    return config, process, scale


def import_sr3(checkpoint: str | Path, out: str | Path, config_file: str | Path | None, scale: int = 0) -> Path:
    """Convert a released SR3 generator (`I..._E..._gen.pth`) into a teacher folder (`load_teacher(out)`)."""
    if not config_file:
        raise CheckpointError("an SR3 import needs the release's JSON config (--config), e.g. sr_sr3_16_128.json: the "
                              "checkpoint's shapes do not give its attention resolutions or noise schedule")
    config, settings, found_scale = sr3_settings(_read_json_with_comments(config_file))
    scale = scale or found_scale
    if not scale:
        raise CheckpointError(f"{config_file} names no l_resolution / r_resolution: pass --scale")
    state = read_checkpoint(checkpoint)
    state = {k[len("denoise_fn."):] if k.startswith("denoise_fn.") else k: v for k, v in state.items()}
    process = DDPMProcess(**settings, condition_resize="pil")  # the condition as SR3's data preparation makes it
    if "betas" in state and not torch.allclose(state["betas"].double(),
                                               torch.linspace(settings["beta_start"], settings["beta_end"],
                                                              settings["num_train_timesteps"], dtype=torch.float64)):
        raise CheckpointError(f"{checkpoint}: its saved betas are not the config's linear schedule")
    try:
        unet = SR3UNet(**config)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{config_file}: the network settings do not build: {err}") from None
    convert(state, unet, sr3_name_map(config, state), str(checkpoint), ignore=SR3_SCHEDULE_BUFFERS)
    return save_teacher(Teacher(unet, process, scale=scale), out)


def _read_json_with_comments(path: str | Path) -> dict:
    """The released configs carry // comments; they are cut at '//' line by line, as the official reader does."""
    path = Path(path)
    try:
        text = "".join(line.split("//")[0] + "\n" for line in path.read_text().splitlines())
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read the config {path}: {err}") from None


register_importer(Importer(
    "sr3", "a released SR3 generator (Janspiry/Image-Super-Resolution-via-Iterative-Refinement; --config required)",
    "teachers.load_teacher({folder!r}), or teacher.path in a recipe", (),
    lambda args: (import_sr3(args.checkpoint, args.out, args.config, args.scale), [])))
