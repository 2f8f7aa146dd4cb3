"""Params / OPs by the paper's rule (complexity.md) on the official configuration and its Table 1 switches.

The ablation expectations are derived in closed form from the layer list of bidiffsr.md, independently of the
counter: per binarized conv unit, TaR holds K*Cin and TaA 3*K*Cout parameters.
"""

import pytest
import torch
from torch import nn

from pipeline import complexity as complexity_command
from students.bidiffsr import BiDiffSRUNet
from students.binary import BinaryConv2d
from students.complexity import format_ops, format_params, measure, measure_student

PAPER = measure_student()

# Channels of the 56 binarized units: 32 in binarized res-blocks, 6 in CP-Down (halves), 6 in CP-Up, 12 in CS-Fusion.
UNIT_CHANNELS = 17_344
CSF_CHANNELS = 6 * 512 + 6 * 256
CSF_WEIGHTS = 3 * 2 * 512**2 + 3 * 2 * 256**2
CSF_MACS = 6 * 512 * 512 * 32**2 + 6 * 256 * 256 * 64**2
CSF_FP_PARAMS = 3 * 2 * (128 * 128 + 128) + 3 * 2 * (64 * 64 + 64)
CP_DOWN_WEIGHTS = sum(2 * 9 * (c // 2) ** 2 for c in (64, 128, 256))
CP_UP_WEIGHTS = sum(2 * 9 * c * c for c in (512, 256, 128))
CONV_DOWN_WEIGHTS = sum(9 * c * 2 * c for c in (64, 128, 256))
CONV_UP_WEIGHTS = sum(9 * c * c // 2 for c in (512, 256, 128))


def test_official_config_raw_counts():
    with torch.device("meta"):
        model = BiDiffSRUNet()
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(binary) == 56 and all(m.bias is None for m in binary)
    assert sum(p.numel() for p in model.parameters()) == 51_280_387
    tar = sum(m.shift.bias.numel() for m in binary)
    taa = sum(p.numel() for m in binary for p in m.activation.parameters())
    assert (tar, taa) == (86_720, 260_160)
    assert sum(m.in_channels for m in binary) == UNIT_CHANNELS


def test_paper_params_and_ops_to_the_printed_digit():
    assert (PAPER.binary_params, PAPER.fp_params) == (48_211_968, 3_068_419)
    assert PAPER.params == 4_575_043
    assert format_params(PAPER.params) == "4.58M"
    assert PAPER.ops_by_kind == {
        "binary_macs": 98_650_030_080,
        "conv_macs": 33_625_735_168,
        "linear_macs": 405_504,
        "attention_ops": 1_073_741_824,
        "groupnorm_ops": 5 * 85_458_944,
    }
    assert PAPER.ops == 36_668_583_936
    assert format_ops(PAPER.ops) == "36.67G"


def test_ops_without_attention_and_groupnorm_miss_the_paper():
    """Fact 5: conv/linear MACs alone give 35.17G, so the extra terms are required."""
    k = PAPER.ops_by_kind
    assert format_ops(k["conv_macs"] + k["linear_macs"] + k["binary_macs"] / 64) == "35.17G"


@pytest.mark.parametrize(
    "overrides, binary_params, fp_params, binary_macs",
    [
        # Table 1(d): number of TaR/TaA pairs K (each pair adds 4 parameters per unit channel)
        ({"timestep_groups": 1}, 48_211_968, 3_068_419 - 4 * 4 * UNIT_CHANNELS, 98_650_030_080),
        ({"timestep_groups": 2}, 48_211_968, 3_068_419 - 3 * 4 * UNIT_CHANNELS, 98_650_030_080),
        ({"timestep_groups": 10}, 48_211_968, 3_068_419 + 5 * 4 * UNIT_CHANNELS, 98_650_030_080),
        # Table 1(a)/(b): TaR or TaA alone back to one group; identity shortcut costs no parameters
        ({"timestep_aware_shift": False}, 48_211_968, 3_068_419 - 4 * UNIT_CHANNELS, 98_650_030_080),
        ({"timestep_aware_activation": False}, 48_211_968, 3_068_419 - 4 * 3 * UNIT_CHANNELS, 98_650_030_080),
        ({"identity_shortcut": False}, 48_211_968, 3_068_419, 98_650_030_080),
        # Table 1(a)/(c): fusion by addition drops all 24 fusion convs (12 binarized, 12 full precision)
        ({"fusion": "add"}, 48_211_968 - CSF_WEIGHTS, 3_068_419 - 20 * CSF_CHANNELS - CSF_FP_PARAMS,
         98_650_030_080 - CSF_MACS),
        # split = CS-Fusion without the shuffle: same counts
        ({"fusion": "split"}, 48_211_968, 3_068_419, 98_650_030_080),
        # plain binarized down/up convs instead of CP-Down/CP-Up (up adds a nearest upsampling)
        ({"downsample": "conv", "upsample": "conv"},
         48_211_968 - CP_DOWN_WEIGHTS - CP_UP_WEIGHTS + CONV_DOWN_WEIGHTS + CONV_UP_WEIGHTS,
         # units lost: CP-Down 2 x (C/2), CP-Up 2 x C; units gained: down C -> 2C (TaR 5C, TaA 15 * 2C),
         # up C -> C/2 (TaR 5C, TaA 15 * C/2)
         3_068_419 - 20 * 2 * (32 + 64 + 128) - 20 * 2 * (512 + 256 + 128)
         + 5 * (64 + 128 + 256) + 15 * 2 * (64 + 128 + 256) + 5 * (512 + 256 + 128) + 15 * (256 + 128 + 64),
         None),
    ],
)
def test_ablation_rows(overrides, binary_params, fp_params, binary_macs):
    c = measure_student(**overrides)
    assert (c.binary_params, c.fp_params) == (binary_params, fp_params)
    if binary_macs is not None:
        assert c.binary_macs == binary_macs


def test_conv_updown_counts_upsampling_ops():
    c = measure_student(downsample="conv", upsample="conv")
    assert c.ops_by_kind["upsample_ops"] == 512 * 64**2 + 256 * 128**2 + 128 * 256**2


def test_unknown_parametric_module_is_an_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.scale

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 3, 3, padding=1)
            self.odd = Odd()

        def forward(self, x, cond, t):
            return self.odd(self.conv(torch.cat([cond, x], 1)))

    with pytest.raises(NotImplementedError, match="'odd' of type Odd"):
        measure(Net(), 8, 8)


@pytest.mark.slow
def test_cli_prints_the_paper_row(capsys):
    complexity_command.main([])
    out = capsys.readouterr().out
    assert "BI-DiffSR (paper config)" in out and "4.58M" in out and "36.67G" in out


def test_full_precision_twin_counts_every_weight_in_full_precision():
    from students.complexity import measure_student

    student, twin = measure_student(None), measure_student(None, binarizer="none")
    assert twin.binary_params == 0 and twin.binary_macs == 0
    assert twin.raw_params == student.raw_params and twin.fp_params == student.raw_params
    assert twin.ops == student.fp_ops + student.binary_macs
