"""The BI-DiffSR UNet: structure, per-sample timestep groups, padding, config errors, save/load (bidiffsr.md)."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from students.bidiffsr import BiDiffSRUNet, CPDown, CPUp, SelfAttention, SplitFusion, attention_by_convs
from students.binarizers import get_binarizer
from students.binary import BinaryConv2d, FPConv2d


def conv_builder(cin, cout, k, binary, stride=1):
    return FPConv2d(cin, cout, k, stride=stride)


def randomize_timestep_params(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("shift.bias", "shift_in", "shift_out", "slope")):
                p.normal_(0.0, 0.3)


def test_output_shape_and_feature_taps(tiny_config):
    model = BiDiffSRUNet(**tiny_config).eval()
    x = torch.randn(2, 3, 16, 16)
    out, feats = model(x, torch.rand_like(x), torch.tensor([3, 1700]), return_features=True)
    assert out.shape == x.shape
    assert list(feats) == ["down.0.0", "down.1.0", "mid.0", "mid.1", "up.1.0", "up.1.1", "up.0.0", "up.0.1"]
    assert feats["down.0.0"].shape == (2, 16, 16, 16) and feats["mid.1"].shape == (2, 32, 8, 8)


def test_condition_comes_first_in_the_input(tiny_config):
    """Fact 7: zero the conv_in weights of channels 3..5 and the output no longer depends on x_t."""
    model = BiDiffSRUNet(**tiny_config).eval()
    with torch.no_grad():
        model.conv_in.weight[:, 3:] = 0
    cond = torch.rand(1, 3, 16, 16)
    t = torch.tensor([100])
    a = model(torch.randn(1, 3, 16, 16), cond, t)
    b = model(torch.randn(1, 3, 16, 16), cond, t)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, model(torch.randn(1, 3, 16, 16), torch.rand(1, 3, 16, 16), t))


def test_sinusoidal_code_puts_sine_first():
    model = BiDiffSRUNet(base_channels=16, channel_mults=(1,), norm_groups=4, image_size=32, fp_resolutions=())
    t = torch.tensor([7.0])
    f = torch.exp(-math.log(1e4) * torch.arange(8) / 8)
    torch.testing.assert_close(model.time_proj(t), torch.cat([torch.sin(t * f), torch.cos(t * f)])[None])


def test_mixed_timestep_batch_equals_per_sample_runs(tiny_config):
    """Each sample picks its own TaR/TaA group; a batch mixing timesteps equals per-sample evaluation."""
    model = BiDiffSRUNet(**tiny_config).eval()
    randomize_timestep_params(model)
    x, cond = torch.randn(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    t = torch.tensor([10, 900, 1999])
    batched = model(x, cond, t)
    single = torch.cat([model(x[i : i + 1], cond[i : i + 1], t[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    # ... and the group really matters: forcing sample 1 into group 0 (t=10's embedding aside) changes its output
    other_group = model(x[1:2], cond[1:2], torch.tensor([10]))
    assert not torch.allclose(other_group, batched[1:2])


def test_group_parameters_select_by_timestep(tiny_config):
    model = BiDiffSRUNet(**tiny_config).eval()
    conv = next(m for m in model.modules() if isinstance(m, BinaryConv2d))
    assert conv.shift.bias.shape == (5, conv.in_channels)
    assert conv.activation.slope.shape == (5, conv.out_channels)
    assert torch.all(conv.activation.slope == 0.25)


@pytest.mark.parametrize("size", [(16, 16), (13, 22), (7, 9), (1, 3)])
def test_any_input_size_is_padded_and_cropped(tiny_config, size):
    model = BiDiffSRUNet(**tiny_config).eval()
    x = torch.randn(1, 3, *size)
    assert model(x, x, torch.tensor([5])).shape == x.shape


def test_padding_does_not_change_an_aligned_interior():
    """Padding happens bottom/right: for a model with no down-sampling the output equals the unpadded one."""
    model = BiDiffSRUNet(base_channels=16, channel_mults=(1,), norm_groups=4, image_size=32, fp_resolutions=()).eval()
    x = torch.randn(1, 3, 11, 5)
    assert model.size_multiple == 1
    assert model(x, x, 3).shape == x.shape


def test_timesteps_must_match_batch(tiny_config):
    model = BiDiffSRUNet(**tiny_config)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="t has 3 timesteps for a batch of 2"):
        model(x, x, torch.tensor([1, 2, 3]))


def test_cp_down_up_and_cs_fusion_layouts():
    """Facts 9 and 10, with full-precision convs so the channel routing is checkable."""
    down, up = CPDown(8, conv_builder), CPUp(8, conv_builder)
    x = torch.randn(2, 8, 6, 6)
    assert down(x, None).shape == (2, 16, 3, 3) and up(x, None).shape == (2, 4, 12, 12)
    y = down.conv_a(x[:, :4]) + down.conv_b(x[:, 4:])
    d = down(x, None)
    assert torch.equal(d[:, 4 * 1 + 2 * 1 + 0, 2, 1], y[:, 1, 5, 2])  # out[4c + 2i + j, h, w] = y[c, 2h + i, 2w + j]

    fusion = SplitFusion(4, lambda cin, cout, k, binary: _Recorder(), binary=True, shuffle=True)
    dec = torch.arange(4.0).reshape(1, 4, 1, 1)
    skip = 10 + torch.arange(4.0).reshape(1, 4, 1, 1)
    fusion(dec, skip, None)
    assert fusion.conv_a.seen.flatten().tolist() == [1.0, 3.0, 10.0, 12.0]  # odd dec, even skip
    assert fusion.conv_b.seen.flatten().tolist() == [0.0, 2.0, 11.0, 13.0]  # even dec, odd skip


@pytest.mark.parametrize("shuffle", [True, False])
def test_merged_full_precision_fusion_computes_the_same_function(shuffle):
    """Inference form of a full-precision CS-Fusion (or split) fusion: one conv of dec plus one of skip, the shuffle in
    the weights; the same outputs up to float summation order. Binarized fusions are left alone."""
    fusion = SplitFusion(6, conv_builder, binary=False, shuffle=shuffle)
    dec = torch.randn(2, 6, 5, 4).to(memory_format=torch.channels_last)
    skip = torch.randn(2, 6, 5, 4)
    with torch.no_grad():
        reference = fusion(dec, skip, None)
        assert fusion.merge_for_inference()
        torch.testing.assert_close(fusion(dec, skip, None), reference, rtol=1e-5, atol=1e-6)
    binarized = SplitFusion(6, lambda cin, cout, k, binary: BinaryConv2d(cin, cout, k, get_binarizer("bidiffsr")),
                            binary=True, shuffle=shuffle)
    assert not binarized.merge_for_inference() and binarized.merged is None


def test_a_model_merges_exactly_its_full_precision_parts(tiny_config):
    """Full-precision fusions and the middle attention take their inference forms: the same outputs."""
    model = BiDiffSRUNet(**tiny_config, middle_attention=True).eval()
    x, cond, t = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.tensor([7, 1800])
    with torch.no_grad():
        reference = model(x, cond, t)
        fp_fusions = sum(len(lvl.fusions) for lvl in model.decoder if lvl.full_precision)
        assert fp_fusions and model.merge_for_inference() == fp_fusions + 1
        torch.testing.assert_close(model(x, cond, t), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_attention_by_convs_equals_torchs_attention(memory_format):
    """Both products as grouped 1x1 convs: softmax(q k^T / sqrt(C)) v per sample, for several samples and a
    non-square map, as torch's attention computes it; gradients keep torch's path."""
    attention = SelfAttention(24, 8).eval()
    x = torch.randn(3, 24, 5, 7).contiguous(memory_format=memory_format)
    qkv = torch.randn(3, 72, 5, 7).contiguous(memory_format=memory_format)
    q, k, v = qkv.reshape(3, 3, 1, 24, 35).transpose(-1, -2).unbind(1)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(3, 24, 5, 7)
    torch.testing.assert_close(attention_by_convs(qkv), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        reference = attention(x)
        assert attention.merge_for_inference()
        torch.testing.assert_close(attention(x), reference, rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    attention(x).sum().backward()  # torch's path: the conv form is for inference only
    assert x.grad is not None


class _Recorder(torch.nn.Module):
    """A conv unit that records its input and passes it on (plus `addend`, as a unit adds it last)."""

    def forward(self, x, group, addend=None):
        self.seen = x
        return x if addend is None else x + addend


def test_official_levels_are_full_precision_and_ups_binary():
    with torch.device("meta"):
        model = BiDiffSRUNet()
    fp = {len(model.decoder) - 1 - k: lvl.full_precision for k, lvl in enumerate(model.decoder)}
    assert fp == {3: False, 2: False, 1: True, 0: True}
    for lvl in model.decoder:
        if lvl.up is not None:
            assert all(isinstance(m, BinaryConv2d) for m in (lvl.up.conv_a, lvl.up.conv_b))
        kinds = {type(m) for b in lvl.blocks for m in (b.conv1, b.conv2)}
        assert kinds == ({FPConv2d} if lvl.full_precision else {BinaryConv2d})


def test_save_load_round_trip_is_exact(tiny_config, tmp_path):
    model = BiDiffSRUNet(**tiny_config, binarizer="bidiffsr").eval()
    randomize_timestep_params(model)
    model.save_pretrained(tmp_path)
    assert "down.0.0" not in load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = BiDiffSRUNet.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([5, 1500])
    assert torch.equal(model(x, x, t), loaded(x, x, t))
    assert loaded.config.timestep_groups == 5 and list(loaded.config.channel_mults) == [1, 2]


@pytest.mark.parametrize("binarizer", ["bnn", "dorefa", "xnor", "irnet", "reactnet", "bbcu"])
def test_baselines_build_train_and_save(tiny_config, binarizer, tmp_path):
    model = BiDiffSRUNet(**tiny_config, binarizer=binarizer)
    model.set_training_progress(0.5)
    x = torch.randn(2, 3, 8, 8)
    model(x, x, torch.tensor([1, 1999])).abs().mean().backward()
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert binary and all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in binary)
    # only BI-DiffSR keeps K groups; the baselines have one shift / RPReLU per channel where they have any
    for m in binary:
        for table in (getattr(m.shift, "bias", None), getattr(m.activation, "slope", None)):
            assert table is None or table.shape[0] == 1
    model.save_pretrained(tmp_path)
    assert BiDiffSRUNet.from_pretrained(tmp_path).config.binarizer == binarizer


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"binarizer": "ternary"}, "binarizer='ternary'"),
        ({"channel_mults": (1, 3)}, "channel_mults"),
        ({"base_channels": 12, "norm_groups": 8}, "norm_groups=8"),
        ({"timestep_groups": 0}, "timestep_groups=0"),
        ({"timestep_groups": 2001}, "timestep_groups=2001"),
        ({"fp_resolutions": (64,)}, "fp_resolutions"),
        ({"base_channels": 5, "norm_groups": 5}, "base_channels=5"),
        ({"fusion": "mix"}, "fusion='mix'"),
        ({"downsample": "pool"}, "downsample='pool'"),
        ({"in_channels": 5}, "in_channels=5"),
    ],
)
def test_inconsistent_config_names_the_field(tiny_config, overrides, field):
    with pytest.raises(ValueError) as err:
        BiDiffSRUNet(**{**tiny_config, **overrides})
    assert field in str(err.value)


def test_ablation_switches_change_the_structure(tiny_config):
    x = torch.randn(1, 3, 8, 8)
    for overrides in ({"fusion": "add"}, {"fusion": "concat"}, {"fusion": "split"},
                      {"downsample": "conv", "upsample": "conv"}, {"identity_shortcut": False},
                      {"timestep_aware_shift": False}, {"timestep_aware_activation": False}):
        model = BiDiffSRUNet(**{**tiny_config, **overrides}).eval()
        assert model(x, x, torch.tensor([3])).shape == x.shape
    no_shortcut = BiDiffSRUNet(**{**tiny_config, "identity_shortcut": False})
    assert not any(m.has_shortcut for m in no_shortcut.modules() if isinstance(m, BinaryConv2d))


@pytest.mark.slow
def test_the_middle_attention_never_materialises_its_matrix(tmp_path):
    """A 2-level student's middle attention at a 384-pixel tile has 192 x 192 = 36,864 positions: a materialised
    matrix would be 5.4 GB. Measured in a fresh process (peak resident memory, capped address space)."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import resource, torch
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a runaway allocation fails instead of swapping
from conftest import TINY_STUDENT
from students.bidiffsr import BiDiffSRUNet
model = BiDiffSRUNet(**TINY_STUDENT).eval()
x = torch.rand(1, 3, 384, 384)
with torch.no_grad():
    model(x, x, torch.tensor([3]))
# VmHWM is this process's own peak: ru_maxrss would include the parent's, kept across the exec of a vfork child
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": f"{root}:{root / 'tests'}", "PATH": "/usr/bin:/bin",
                                 "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) < 2_000_000, result.stdout  # KiB: under 2 GB
