"""Released ResShift / SinSR files (zsyOAOA/ResShift, wyf0912/SinSR) -> our modules, strictly, and the teacher
folder `python -m pipeline.importers resshift` writes: `SwinUNet` on `LatentResShiftProcess`, whose
autoencoder is the converted VQModel (saved in the folder's `scheduler/autoencoder/`).

- The denoiser (`resshift_realsrx4_s15_v1.pth`, SinSR's one-step checkpoints): `teachers.swin_unet.SwinUNet` carries
  the released parameter names, so the conversion is the identity on names, with every key, shape and buffer checked.
- The autoencoder (`autoencoder_vq_f4.pth`, latent-diffusion's "VQModelTorch"): diffusers' `VQModel`, renamed from the
  latent-diffusion layout (encoder.down.{level}.block.{i} -> encoder.down_blocks.{level}.resnets.{i}; the decoder's
  `up` list is indexed from the finest level, diffusers' `up_blocks` from the coarsest; the mid attention's 1x1 convs
  become linears). Its `loss.*` entries (the training discriminator and perceptual loss of latent-diffusion's
  checkpoints) are not part of the model and are skipped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import VQModel

from pipeline.importers import (CheckpointError, Importer, convert, copied, read_checkpoint, read_yaml,
                                register_importer, save_teacher)
from teachers import LatentResShiftProcess, Teacher
from teachers.swin_unet import SwinUNet

# autoencoder_vq_f4.pth (configs/realsr_swinunet_realesrgan256.yaml, `autoencoder`)
VQ_F4 = dict(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3, embed_dim=3, n_embed=8192, resolution=256)


def vq_model(ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int, embed_dim: int, n_embed: int,
             resolution: int) -> VQModel:
    """diffusers' VQModel with latent-diffusion's VQ autoencoder settings (no attention but the mid blocks')."""
    levels = len(ch_mult)
    return VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                   up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(ch * m for m in ch_mult),
                   layers_per_block=num_res_blocks, act_fn="silu", latent_channels=z_channels,
                   sample_size=resolution, num_vq_embeddings=n_embed, norm_num_groups=32, vq_embed_dim=embed_dim,
                   scaling_factor=1.0)


def _resnet(official: str, ours: str, state: dict) -> list[tuple[str, str, str]]:
    pairs = []
    for part in ("norm1", "conv1", "norm2", "conv2"):
        pairs += copied(f"{official}.{part}", f"{ours}.{part}")
    if f"{official}.nin_shortcut.weight" in state:
        pairs += copied(f"{official}.nin_shortcut", f"{ours}.conv_shortcut")
    return pairs


def _mid(official: str, ours: str, state: dict) -> list[tuple[str, str, str]]:
    pairs = _resnet(f"{official}.block_1", f"{ours}.resnets.0", state)
    pairs += _resnet(f"{official}.block_2", f"{ours}.resnets.1", state)
    pairs += copied(f"{official}.attn_1.norm", f"{ours}.attentions.0.group_norm")
    for src, dst in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        pairs += [(f"{official}.attn_1.{src}.weight", f"{ours}.attentions.0.{dst}.weight", "linear"),
                  (f"{official}.attn_1.{src}.bias", f"{ours}.attentions.0.{dst}.bias", "copy")]
    return pairs


def vq_name_map(levels: int, num_res_blocks: int, state: dict) -> list[tuple[str, str, str]]:
    """(latent-diffusion name, diffusers VQModel name, how) for every parameter of the autoencoder."""
    pairs = copied("encoder.conv_in", "encoder.conv_in")
    for level in range(levels):
        for i in range(num_res_blocks):
            pairs += _resnet(f"encoder.down.{level}.block.{i}", f"encoder.down_blocks.{level}.resnets.{i}", state)
        if level < levels - 1:
            pairs += copied(f"encoder.down.{level}.downsample.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv")
    pairs += _mid("encoder.mid", "encoder.mid_block", state)
    pairs += copied("encoder.norm_out", "encoder.conv_norm_out") + copied("encoder.conv_out", "encoder.conv_out")
    pairs += copied("quant_conv", "quant_conv") + copied("post_quant_conv", "post_quant_conv")
    pairs += copied("quantize.embedding", "quantize.embedding", ("weight",))
    pairs += copied("decoder.conv_in", "decoder.conv_in") + _mid("decoder.mid", "decoder.mid_block", state)
    for level in range(levels):
        up = levels - 1 - level
        for i in range(num_res_blocks + 1):
            pairs += _resnet(f"decoder.up.{level}.block.{i}", f"decoder.up_blocks.{up}.resnets.{i}", state)
        if level > 0:
            pairs += copied(f"decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv")
    pairs += copied("decoder.norm_out", "decoder.conv_norm_out") + copied("decoder.conv_out", "decoder.conv_out")
    return pairs


def convert_autoencoder(path: str | Path, settings: dict | None = None) -> VQModel:
    """A released latent-diffusion VQ autoencoder file -> diffusers' VQModel (f4 settings unless given)."""
    settings = dict(VQ_F4, **(settings or {}))
    state = read_checkpoint(path)
    if not any(k.startswith("encoder.") for k in state) or "quantize.embedding.weight" not in state:
        raise CheckpointError(f"{path} is not a VQ autoencoder checkpoint (no encoder.* or quantize.embedding.weight; "
                              "give the autoencoder file, e.g. autoencoder_vq_f4.pth)")
    attention = sorted(k for k in state if ".attn." in k and not k.startswith("loss."))
    if attention:
        raise CheckpointError(f"{path}: {attention[0]!r}: per-level attention (attn_resolutions) is not supported; "
                              "the ResShift f4 autoencoder has none")
    model = vq_model(**settings)
    pairs = vq_name_map(len(settings["ch_mult"]), settings["num_res_blocks"], state)
    return convert(state, model, pairs, str(path), ignore={k for k in state if k.startswith("loss.")})


def convert_swin_unet(path: str | Path, config: dict | None = None) -> SwinUNet:
    """A released ResShift or SinSR denoiser file -> SwinUNet (the released real-SR config unless given)."""
    state = read_checkpoint(path)
    if "input_blocks.0.0.weight" not in state or not any(".patch_embed." in k for k in state):
        raise CheckpointError(f"{path} is not a ResShift UNetModelSwin checkpoint (no input_blocks.0.0.weight or Swin "
                              "layers; the autoencoder goes to --autoencoder)")
    with torch.device("meta"):
        model = SwinUNet(**(config or {}))
    model = model.to_empty(device="cpu")
    pairs = [(name, name, "copy") for name in model.state_dict()]
    return convert(state, model, pairs, str(path))


RESSHIFT_LICENSE = "other:S-Lab License 1.0 (non-commercial; zsyOAOA/ResShift LICENSE)"
SINSR_LICENSE = "cc-by-nc-sa-4.0"  # wyf0912/SinSR's LICENSE

_SWIN_KEYS = {"image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
              "dropout", "channel_mult", "conv_resample", "num_heads", "num_head_channels", "use_scale_shift_norm",
              "swin_depth", "swin_embed_dim", "window_size", "mlp_ratio", "cond_lq", "lq_size"}
_IGNORED_SWIN_KEYS = {"use_fp16"}  # precision at run time, not a layout


def _resolve(value, options: dict):
    """OmegaConf's `${a.b.c}` references (the release's out_channels: ${autoencoder.params.embed_dim})."""
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        node = options
        for part in value[2:-1].split("."):
            if not isinstance(node, dict) or part not in node:
                raise CheckpointError(f"the option file's reference {value} points nowhere")
            node = node[part]
        return node
    return value


def resshift_settings(options: dict, source: str) -> tuple[dict, dict, dict, int]:
    """(SwinUNet config, LatentResShiftProcess settings, VQ autoencoder settings, scale) from a released ResShift /
    SinSR option file; what our modules do not implement is an error naming the key."""

    def need(ok: bool, key: str, why: str):
        if not ok:
            raise CheckpointError(f"{source}: {key}: {why}")

    try:
        model = {k: _resolve(v, options) for k, v in options["model"]["params"].items()}
        diffusion = options["diffusion"]["params"]
        auto = options["autoencoder"]["params"]
        dd = auto["ddconfig"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{source} lacks {err} (model.params, diffusion.params, autoencoder.params.ddconfig)") \
            from None
    need(model.get("dims", 2) == 2, "model.params.dims", "only 2-D models exist here")
    need(not model.get("resblock_updown", False), "model.params.resblock_updown", "ResBlock up/down is not supported")
    unknown = sorted(set(model) - _SWIN_KEYS - _IGNORED_SWIN_KEYS - {"dims", "resblock_updown"})
    if unknown:
        need(False, f"model.params.{unknown[0]}", "not a UNetModelSwin setting we know")
    unet = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.items() if k in _SWIN_KEYS}
    if model.get("cond_lq", True) and "lq_size" not in model:
        # wyf0912/SinSR's UNetModelSwin (configs/SinSR.yaml): in_channels counts the LR's 3 channels, and the LR is
        # concatenated at the latent size with no feature extractor (ours: lq_size == image_size)
        need(int(model.get("in_channels", 6)) > 3, "model.params.in_channels",
             "a network without lq_size (SinSR's layout) counts the LR's 3 channels in in_channels")
        unet["in_channels"] = int(model.get("in_channels", 6)) - 3
        unet["lq_size"] = unet.get("image_size", 64)
    need(diffusion.get("schedule_name", "exponential") == "exponential", "diffusion.params.schedule_name",
         "only the released 'exponential' eta schedule is supported")
    need(diffusion.get("predict_type", "xstart") == "xstart", "diffusion.params.predict_type",
         "only x0 ('xstart') prediction is supported")
    need(diffusion.get("latent_flag", True) and diffusion.get("normalize_input", True), "diffusion.params.latent_flag",
         "only the latent process with normalised input is supported")
    need(diffusion.get("timestep_respacing") in (None, diffusion.get("steps")), "diffusion.params.timestep_respacing",
         "respaced chains are not supported")
    process = dict(num_train_timesteps=int(diffusion["steps"]), kappa=float(diffusion["kappa"]),
                   power=float(diffusion.get("schedule_kwargs", {}).get("power", 0.3)),
                   min_noise_level=float(diffusion["min_noise_level"]), etas_end=float(diffusion["etas_end"]),
                   scale_factor=float(diffusion.get("scale_factor", 1.0)))
    need(not dd.get("attn_resolutions"), "autoencoder.params.ddconfig.attn_resolutions",
         "per-level attention in the autoencoder is not supported")
    vq = dict(ch=dd["ch"], ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
              z_channels=dd["z_channels"], embed_dim=auto["embed_dim"], n_embed=auto["n_embed"],
              resolution=dd.get("resolution", 256))
    return unet, process, vq, int(diffusion.get("sf", 4))


def import_resshift(checkpoint: str | Path, out: str | Path, autoencoder: str | Path | None,
                    config_file: str | Path | None = None, one_step: bool = False,
                    scale: int = 0) -> tuple[Path, list[str]]:
    """Convert a released ResShift (or SinSR) denoiser and its VQ autoencoder into a teacher folder.

    Args:
        checkpoint: the released denoiser; `autoencoder`: the VQ-f4 autoencoder file it was trained on.
        out: the folder to write (`load_teacher(out)` loads it).
        config_file: the release's option YAML; None: the released real-SR x4 settings, said in the notes.
        one_step: the checkpoint is SinSR's: the folder's process is the one-step variant.
        scale: overrides the option file's SR factor (0: the file's).

    Returns:
        (the folder, notes about settings that were assumed).
    """
    if not autoencoder:
        raise CheckpointError("a ResShift import needs the autoencoder the model was trained on (--autoencoder, e.g. "
                              "autoencoder_vq_f4.pth): the denoiser works on its latents")
    notes = []
    if config_file:
        options = read_yaml(config_file, "diffusion")
        unet_config, settings, vq, found_scale = resshift_settings(options, str(config_file))
    else:
        # the defaults of SwinUNet, LatentResShiftProcess and VQ_F4 are the released real-SR x4 (v1/v2) ones
        unet_config, settings, vq, found_scale = {}, {}, {}, 4
        c = LatentResShiftProcess().config
        notes.append(f"no --config: the released real-SR x4 settings are assumed ({c.num_train_timesteps} steps, "
                     f"kappa {c.kappa:g}, power {c.power:g}, min_noise_level {c.min_noise_level:g}, etas_end "
                     f"{c.etas_end:g}; the 4-step v3 model needs its option file)")
    try:
        unet = convert_swin_unet(checkpoint, unet_config)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{config_file}: the network settings do not build: {err}") from None
    vae = convert_autoencoder(autoencoder, vq)
    process = LatentResShiftProcess(**settings).use_autoencoder(vae)
    if one_step:  # SinSR: one evaluation at the top step from x_T, read as x0
        process = process.one_step_variant()
    folder = save_teacher(Teacher(unet, process, scale=scale or found_scale, degradation="realesrgan",
                                  license=SINSR_LICENSE if one_step else RESSHIFT_LICENSE), out)
    return folder, notes


register_importer(Importer(
    "resshift", "a released ResShift denoiser (zsyOAOA/ResShift) or, with --one-step, SinSR (wyf0912/SinSR)",
    "teachers.load_teacher({folder!r}), or teacher.path in a recipe", ("autoencoder", "one_step"),
    lambda args: import_resshift(args.checkpoint, args.out, args.autoencoder, args.config, args.one_step,
                                 args.scale)))
