"""ResShift's released denoiser (UNetModelSwin): the released size and parameter names, its shifted-window mask as the
released code computes it, the vectorised window attention against a per-window reference, and the denoiser call."""

import pytest
import torch

from teachers.swin_unet import (SwinTransformerBlock, SwinUNet, merge, partition, released_config_parameter_count,
                                shifted_window_mask)

SMALL = dict(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
             attention_resolutions=(32, 16), swin_embed_dim=32, num_head_channels=16, window_size=8, lq_size=32)


def test_the_released_configuration_has_the_released_size():
    assert released_config_parameter_count() == 118_593_583  # ../shared/spec/resshift.md, checkable fact 6


def test_parameter_and_buffer_names_are_the_released_ones():
    keys = set(SwinUNet(**SMALL).state_dict())
    for key in ["time_embed.0.weight", "time_embed.2.bias", "input_blocks.0.0.weight",
                "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.in_layers.2.weight",
                "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.out_layers.3.weight",
                "input_blocks.1.1.patch_embed.proj.weight", "input_blocks.1.1.blocks.0.norm1.weight",
                "input_blocks.1.1.blocks.0.attn.relative_position_bias_table",
                "input_blocks.1.1.blocks.0.attn.relative_position_index", "input_blocks.1.1.blocks.0.attn.qkv.bias",
                "input_blocks.1.1.blocks.1.attn_mask", "input_blocks.1.1.blocks.1.mlp.fc2.weight",
                "input_blocks.1.1.patch_unembed.proj.weight", "input_blocks.2.0.op.weight",
                "input_blocks.3.0.skip_connection.weight", "middle_block.0.in_layers.2.weight",
                "middle_block.1.blocks.1.attn.proj.weight", "middle_block.2.out_layers.3.bias",
                "output_blocks.0.0.skip_connection.weight", "output_blocks.1.1.conv.weight",
                "output_blocks.2.1.blocks.1.attn_mask", "out.0.weight", "out.2.weight"]:
        assert key in keys, key
    # a shifted block stores its mask unless one window covers the whole map (the released 8x8 level, window 8)
    assert "middle_block.1.blocks.1.attn_mask" in keys  # 16x16, window 8
    assert SwinUNet(**dict(SMALL, window_size=16)).state_dict().keys().isdisjoint({"middle_block.1.blocks.1.attn_mask"})


def released_mask_reference(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """The released calculate_mask step by step, with its indexing as written: label assignment on a (1, 1, H, W) map
    through [:, rows, cols, :], windows cut from (B, C, H, W), then permuted (0, 2, 3, 1) and flattened."""
    img = torch.zeros(1, 1, h, w)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for a in bands:
        for b in bands:
            img[:, a, b, :] = label
            label += 1
    windows = img.view(1, 1, h // window, window, w // window, window).permute(0, 2, 4, 3, 5, 1)
    windows = windows.reshape(-1, window, window, 1).permute(0, 2, 3, 1).reshape(-1, window * window)
    diff = windows[:, None, :] - windows[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("h, w", [(16, 16), (32, 16), (24, 40)])
def test_shifted_window_mask_is_the_released_one(h, w):
    torch.testing.assert_close(shifted_window_mask(h, w, 8, 4), released_mask_reference(h, w, 8, 4), rtol=0, atol=0)


def test_partition_and_merge_are_inverse():
    x = torch.randn(2, 5, 16, 24)
    assert partition(x, 8).shape == (2, 6, 64, 5)
    assert torch.equal(merge(partition(x, 8), 8, 16, 24), x)
    assert torch.equal(partition(x, 8)[1, 4, 8 * 3 + 2], x[1, :, 8 + 3, 8 * 1 + 2])  # window (1, 1), token (3, 2)


def per_window_reference(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """The shifted block with explicit loops over windows and heads and the softmax written out."""
    b, c, h, w = x.shape
    ws, shift, attn = block.window, block.shift, block.attn
    heads, d = attn.heads, c // attn.heads
    mask = shifted_window_mask(h, w, ws, shift) if shift else None
    y = torch.roll(block.norm1(x), (-shift, -shift), dims=(2, 3))
    out = torch.zeros_like(y)
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(ws * ws, ws * ws, heads)
    for n in range(b):
        for i in range(h // ws):
            for j in range(w // ws):
                tokens = y[n, :, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws].reshape(c, -1).T  # (ws^2, C), row-major
                q, k, v = attn.qkv(tokens).view(ws * ws, 3, heads, d).unbind(1)
                heads_out = []
                for head in range(heads):
                    logits = q[:, head] @ k[:, head].T * d**-0.5 + bias[:, :, head]
                    if mask is not None:
                        logits = logits + mask[i * (w // ws) + j]
                    heads_out.append(torch.softmax(logits, dim=-1) @ v[:, head])
                merged = attn.proj(torch.cat(heads_out, dim=1))
                out[n, :, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws] = merged.T.reshape(c, ws, ws)
    x = x + torch.roll(out, (shift, shift), dims=(2, 3))
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift", [0, 4])
def test_window_attention_matches_a_per_window_reference(shift):
    torch.manual_seed(0)
    block = SwinTransformerBlock(dim=32, resolution=16, heads=2, window=8, shift=shift, mlp_ratio=2.0).eval()
    x = torch.randn(2, 32, 16, 24)  # not the block's resolution: the mask is computed for this size
    with torch.no_grad():
        torch.testing.assert_close(block(x), per_window_reference(block, x), rtol=1e-4, atol=1e-5)
        square = torch.randn(1, 32, 16, 16)  # the stored mask
        torch.testing.assert_close(block(square), per_window_reference(block, square), rtol=1e-4, atol=1e-5)


def test_denoiser_call_features_per_sample_time_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SwinUNet(**SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised output convs would hide everything
            p.add_(0.02 * torch.randn_like(p))
    x, lr = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32) * 2 - 1
    t = torch.tensor([0, 14])
    with torch.no_grad():
        out, features = model(x, lr, t, return_features=True)
        assert out.shape == (2, 3, 32, 32)
        assert list(features) == ["down.0.0", "down.1.0", "mid.0", "up.1.0", "up.1.1", "up.0.0", "up.0.1"]
        one = model(x[1:], lr[1:], t[1:])
        torch.testing.assert_close(out[1:], one, rtol=1e-4, atol=1e-5)  # each sample its own timestep
        assert not torch.allclose(model(x, lr, torch.tensor([14, 14]))[0], out[0])
        model.save_pretrained(tmp_path / "unet")
        again = SwinUNet.from_pretrained(tmp_path / "unet")
        assert torch.equal(again(x, lr, t), out)
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.randn(1, 3, 24, 24), torch.randn(1, 3, 24, 24), t[:1])
    with pytest.raises(ValueError, match="same size"):
        model(x, lr[:, :, :16], t)
