"""Importing released ResShift / SinSR files: the VQ-f4 autoencoder (latent-diffusion layout -> diffusers' VQModel)
checked against a functional re-statement of latent-diffusion's encoder and decoder on the same named tensors, and
the UNetModelSwin denoiser (identity names, strict); wrappers, prefixes and every kind of mismatch are clear errors.
Checkpoints are written by the tests in the released layouts at small widths (random weights)."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.importers import CheckpointError
from pipeline.importers.resshift import convert_autoencoder, convert_swin_unet
from teachers.swin_unet import SwinUNet

SMALL_VQ = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=3, n_embed=16, resolution=32)
SMALL_UNET = dict(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                  attention_resolutions=(32, 16), swin_embed_dim=32, num_head_channels=16, window_size=8, lq_size=32)


def ldm_vq_state(ch, ch_mult, num_res_blocks, z_channels, embed_dim, n_embed, resolution) -> dict:
    """Random tensors under latent-diffusion's VQModel names and shapes."""
    g = torch.Generator().manual_seed(0)
    state = {}

    def conv(name, cout, cin, k):
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (cin * k * k) ** -0.5
        state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1

    def norm(name, c):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cout, cin, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cin, 1)

    def mid(name, c):
        resnet(f"{name}.block_1", c, c)
        norm(f"{name}.attn_1.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.attn_1.{part}", c, c, 1)
        resnet(f"{name}.block_2", c, c)

    levels = len(ch_mult)
    conv("encoder.conv_in", ch, 3, 3)
    block_in = ch
    for i in range(levels):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i < levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    mid("encoder.mid", block_in)
    norm("encoder.norm_out", block_in), conv("encoder.conv_out", z_channels, block_in, 3)
    conv("quant_conv", embed_dim, z_channels, 1)
    state["quantize.embedding.weight"] = torch.randn(n_embed, embed_dim, generator=g)
    conv("post_quant_conv", z_channels, embed_dim, 1)
    conv("decoder.conv_in", block_in, z_channels, 3)
    mid("decoder.mid", block_in)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in), conv("decoder.conv_out", 3, block_in, 3)
    return state


def ldm_forward(s: dict, x: torch.Tensor, levels: int, blocks: int, decode: bool) -> torch.Tensor:
    """latent-diffusion's Encoder + quant_conv (decode=False) or quantize + post_quant_conv + Decoder (decode=True),
    written functionally on the named tensors."""

    def gn(n, h):
        return F.group_norm(h, 32, s[f"{n}.weight"], s[f"{n}.bias"], eps=1e-6)

    def cv(n, h, stride=1, padding=None):
        w = s[f"{n}.weight"]
        return F.conv2d(h, w, s[f"{n}.bias"], stride=stride, padding=w.shape[-1] // 2 if padding is None else padding)

    def res(n, h):
        y = cv(f"{n}.conv1", F.silu(gn(f"{n}.norm1", h)))
        y = cv(f"{n}.conv2", F.silu(gn(f"{n}.norm2", y)))
        return (cv(f"{n}.nin_shortcut", h) if f"{n}.nin_shortcut.weight" in s else h) + y

    def attn(n, h):
        b, c, hh, ww = h.shape
        z = gn(f"{n}.norm", h)
        q, k, v = (cv(f"{n}.{p}", z).reshape(b, c, -1) for p in "qkv")
        w = torch.softmax(q.transpose(1, 2) @ k * c**-0.5, dim=2)  # (b, queries, keys)
        return h + cv(f"{n}.proj_out", (v @ w.transpose(1, 2)).reshape(b, c, hh, ww))

    def mid(n, h):
        return res(f"{n}.block_2", attn(f"{n}.attn_1", res(f"{n}.block_1", h)))

    if not decode:
        h = cv("encoder.conv_in", x)
        for i in range(levels):
            for j in range(blocks):
                h = res(f"encoder.down.{i}.block.{j}", h)
            if i < levels - 1:
                h = cv(f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2, padding=0)
        h = cv("encoder.conv_out", F.silu(gn("encoder.norm_out", mid("encoder.mid", h))))
        return cv("quant_conv", h)
    codebook = s["quantize.embedding.weight"]
    flat = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    nearest = codebook[torch.cdist(flat, codebook).argmin(dim=1)]
    h = nearest.view(x.shape[0], x.shape[2], x.shape[3], -1).permute(0, 3, 1, 2)
    h = mid("decoder.mid", cv("decoder.conv_in", cv("post_quant_conv", h)))
    for i in reversed(range(levels)):
        for j in range(blocks + 1):
            h = res(f"decoder.up.{i}.block.{j}", h)
        if i > 0:
            h = cv(f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return cv("decoder.conv_out", F.silu(gn("decoder.norm_out", h)))


def test_vq_autoencoder_matches_latent_diffusion(tmp_path):
    state = ldm_vq_state(**SMALL_VQ)
    path = tmp_path / "autoencoder_vq_f4.pth"
    torch.save({"state_dict": {**state, "loss.discriminator.main.0.weight": torch.zeros(2)}}, path)
    vq = convert_autoencoder(path, SMALL_VQ)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latent = vq.encode(x).latents
        torch.testing.assert_close(latent, ldm_forward(state, x, 2, 1, decode=False), rtol=1e-4, atol=1e-4)
        assert latent.shape == (2, 3, 16, 16)
        image = vq.decode(latent).sample  # quantised before decoding, as the released code decodes
        torch.testing.assert_close(image, ldm_forward(state, latent, 2, 1, decode=True), rtol=1e-4, atol=1e-4)


def assert_refused(tmp_path, cases: dict, convert, *args):
    """Each case (a state dict, the message expected) written to a file: `convert` refuses it naming the file."""
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(bad, path)
        with pytest.raises(CheckpointError, match=message) as err:
            convert(path, *args)
        assert str(path) in str(err.value)


def test_vq_autoencoder_mismatches_are_errors(tmp_path):
    state = ldm_vq_state(**SMALL_VQ)
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "decoder.up.1.upsample.conv.weight"},
                    "missing key 'decoder.up.1.upsample.conv.weight'"),
        "extra": ({**state, "encoder.extra.weight": torch.zeros(1)}, "unexpected key 'encoder.extra.weight'"),
        "shape": ({**state, "quant_conv.weight": torch.zeros(4, 3, 1, 1)}, "'quant_conv.weight' has shape"),
        "kind": ({"input_blocks.0.0.weight": torch.zeros(1)}, "not a VQ autoencoder checkpoint"),
        "attention": ({**state, "encoder.down.0.attn.0.q.weight": torch.zeros(1)}, "per-level attention"),
    }
    assert_refused(tmp_path, cases, convert_autoencoder, SMALL_VQ)


def released_unet_state() -> tuple[SwinUNet, dict]:
    torch.manual_seed(0)
    model = SwinUNet(**SMALL_UNET).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model, model.state_dict()


@pytest.mark.parametrize("wrap", ["bare", "module_prefix", "state_dict", "params_ema"])
def test_swin_unet_checkpoints_load_strictly(tmp_path, wrap):
    model, state = released_unet_state()
    if wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap != "bare":
        state = {wrap: state}
    path = tmp_path / "resshift_realsrx4_s15_v1.pth"
    torch.save(state, path)
    imported = convert_swin_unet(path, SMALL_UNET)
    x, lr, t = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([3, 11])
    with torch.no_grad():
        assert torch.equal(imported(x, lr, t), model(x, lr, t))
    assert imported.get_buffer("input_blocks.1.1.blocks.0.attn.relative_position_index").dtype == torch.long


def test_swin_unet_mismatches_are_errors(tmp_path):
    _, state = released_unet_state()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "input_blocks.1.1.blocks.1.attn_mask"},
                    "missing key 'input_blocks.1.1.blocks.1.attn_mask'"),
        "extra": ({**state, "input_blocks.9.0.weight": torch.zeros(1)}, "unexpected key 'input_blocks.9.0.weight'"),
        "shape": ({**state, "out.2.weight": torch.zeros(3, 32, 1, 1)}, "'out.2.weight' has shape"),
        "kind": ({"encoder.conv_in.weight": torch.zeros(1)}, "not a ResShift UNetModelSwin checkpoint"),
    }
    assert_refused(tmp_path, cases, convert_swin_unet, SMALL_UNET)
    path = tmp_path / "released_config.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="has shape"):  # a small file against the released widths
        convert_swin_unet(path)
