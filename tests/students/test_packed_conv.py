"""Packed 1-bit kernels: the XNOR/popcount path agrees with the float emulation on every conv shape the student uses
(strides, 1x1 / 3x3, odd sizes, borders, more than one 64-bit word, exact zeros), on whole students, and through the
packed file, the pipeline and the upscale command."""

import os

import pytest
import torch
from PIL import Image

from pipeline import upscale
from pipeline.publish import write_model_folder
from pipeline.sr_pipeline import BiDiffSRPipeline
from students.bidiffsr import BiDiffSRUNet
from students.binarizers import BINARIZERS
from students.binary import BinaryConv2d
from students.packed_conv import PackedFilters, pack_signs
from students.packing import save_packed, unpack_student
from teachers import DDPMProcess

SIGN_BINARIZERS = sorted(n for n, b in BINARIZERS.items() if b.sign_activations)


def randomized(unit: BinaryConv2d) -> BinaryConv2d:
    with torch.no_grad():
        for p in unit.parameters():
            p.normal_(0.0, 0.3)
    return unit.eval()


def test_pack_signs_layout_and_zero_plane():
    x = torch.tensor([1.0, -2.0, 0.5] + [-1.0] * 64 + [3.0]).reshape(1, 68, 1, 1)
    bits, nonzero = pack_signs(x)
    assert bits.shape == (1, 1, 1, 2) and nonzero is None
    assert bits[0, 0, 0, 0].item() == 0b101 and bits[0, 0, 0, 1].item() == 0b1000  # channel c -> bit c % 64
    x[0, 1] = 0.0
    _, nonzero = pack_signs(x)
    assert nonzero is not None and nonzero[0, 0, 0, 0].item() & 0b111 == 0b101


@pytest.mark.parametrize("cin, cout, k, stride, h, w", [
    (16, 16, 3, 1, 9, 7), (8, 24, 3, 2, 10, 9), (70, 33, 1, 1, 5, 6), (64, 64, 3, 1, 8, 8), (130, 8, 3, 2, 7, 7),
    (3, 5, 3, 1, 1, 1), (20, 40, 3, 2, 6, 23), (130, 17, 1, 2, 3, 19),  # groups of output pixels at stride 2
    (32, 32, 3, 1, 4, 12), (24, 16, 1, 1, 2, 11)])  # at most 32 channels: the 32-bit path
@pytest.mark.parametrize("binarizer", SIGN_BINARIZERS)
def test_packed_layers_equal_the_float_emulation(binarizer, cin, cout, k, stride, h, w):
    """A contiguous input is packed first; a channels-last one row by row inside the convolution's own pass."""
    unit = randomized(BinaryConv2d(cin, cout, k, BINARIZERS[binarizer], stride=stride))
    x = torch.randn(3, cin, h, w)
    with torch.no_grad():
        reference = unit(x)
        assert unit.use_packed_kernel()
        for memory_format in (torch.contiguous_format, torch.channels_last):
            packed = unit(x.contiguous(memory_format=memory_format))
            assert packed.shape == reference.shape
            torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("binarizer", ["bidiffsr", "reactnet", "bbcu"])
def test_the_fused_unit_equals_the_packed_conv_followed_by_the_unit_step_by_step(binarizer, memory_format):
    """Shift while packing, RPReLU, shortcut, the res-block's time embedding and its input (a map added last) in the
    kernel's output loop: bit for bit what the unfused packed path computes, with a per-sample timestep group per
    sample (three samples, four groups) and exact zeros."""
    unit = randomized(BinaryConv2d(70, 70, 3, BINARIZERS[binarizer], shift_groups=4, activation_groups=4))
    x = torch.randn(3, 70, 7, 6)
    x[1, :, 2, 2] = 0.0
    x = x.contiguous(memory_format=memory_format)
    group, temb = torch.tensor([3, 0, 2]), torch.randn(3, 70)
    addend = torch.randn(3, 140, 7, 6).contiguous(memory_format=memory_format)[:, 35:105]  # a channel slice
    with torch.no_grad():
        reference = unit(x, group, channel_add=temb, addend=addend)
        unit.use_packed_kernel()
        fused = unit(x, group, channel_add=temb, addend=addend)
        y = unit.packed_filters(unit.shift(x, group))
        if unit.binarizer.shortcut_before_activation:
            y = y + x
        y = unit.activation(y, group)
        if not unit.binarizer.shortcut_before_activation:
            y = y + x
        y = y + temb[:, :, None, None]
        y = y + addend
    assert unit.has_shortcut and torch.equal(fused, y)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("zeros_in", ["activations", "weights", "both"])
@pytest.mark.parametrize("cin", [70, 24])  # two 64-bit words; one 32-bit lane (groups of eight output pixels)
def test_exact_zeros_are_kept(zeros_in, memory_format, cin):
    unit = randomized(BinaryConv2d(cin, 20, 3, BINARIZERS["bnn"]))  # BNN: no shift, so zeros in x reach the sign
    x = torch.randn(1, cin, 6, 14)
    if zeros_in != "activations":
        with torch.no_grad():
            unit.weight[0, :5] = 0.0
            unit.weight[17, cin - 3, 1, 1] = 0.0
            unit.weight[19, 2, 0, 2] = 0.0
    if zeros_in != "weights":
        x[0, :, 2, 3] = 0.0
        x[0, 11] = 0.0
        x[0, cin - 4, 0, 5] = 0.0
    with torch.no_grad():
        reference = unit(x)
        unit.use_packed_kernel()
        assert (unit.packed_filters.nonzero is not None) == (zeros_in != "activations")
        assert (pack_signs(x)[1] is not None) == (zeros_in != "weights")
        torch.testing.assert_close(unit(x.contiguous(memory_format=memory_format)), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_rows_with_an_exact_zero_take_the_masked_path_alone(stride):
    """Packed inside the convolution's pass, only the output rows whose window holds a zero are counted with the
    non-zero plane: a zero in one row of one image (the first or the last of a thread's rows) changes those rows'
    outputs only, and each equals the float emulation's; images follow each other in one thread's rows."""
    unit = randomized(BinaryConv2d(40, 24, 3, BINARIZERS["bnn"], stride=stride))
    x = torch.randn(3, 40, 9, 8)
    for image, row in ((0, 0), (1, 4), (2, 8)):
        x[image, :, row, 3] = 0.0
        x[image, 7, row, 5] = 0.0
    with torch.no_grad():
        reference = unit(x)
        unit.use_packed_kernel()
        for threads in (1, 2, 3):
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                packed = unit(x.contiguous(memory_format=torch.channels_last))
            finally:
                torch.set_num_threads(previous)
            torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-5)


def test_channels_last_inputs_pack_like_contiguous_ones():
    x = torch.randn(2, 70, 5, 4)
    x[1, 3, 2, 2] = 0.0
    for got, expected in zip(pack_signs(x.to(memory_format=torch.channels_last)), pack_signs(x)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("half", ["first", "second"])
def test_channel_slices_of_channels_last_tensors_are_read_in_place(half):
    """CP-Down's units take x[:, :C/2] and x[:, C/2:] of a channels-last map as input and shortcut: packed and added
    at their strides (no copy), with the same results as a contiguous copy of the slice."""
    unit = randomized(BinaryConv2d(35, 35, 3, BINARIZERS["bidiffsr"], shift_groups=2, activation_groups=2))
    x = torch.randn(2, 70, 6, 5).to(memory_format=torch.channels_last)
    x[1, 3, 3, 3] = x[1, 40, 2, 1] = 0.0  # exact zeros in both halves
    part = x[:, :35] if half == "first" else x[:, 35:]
    assert not part.is_contiguous() and not part.is_contiguous(memory_format=torch.channels_last)
    for got, expected in zip(pack_signs(part), pack_signs(part.contiguous())):
        assert torch.equal(got, expected)
    group = torch.tensor([1, 0])
    with torch.no_grad():
        reference = unit(part, group)
        unit.use_packed_kernel()
        assert torch.equal(unit(part, group), unit(part.contiguous(), group))
        torch.testing.assert_close(unit(part, group), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("binarizer", ["xnor", "dorefa", "bimacosr"])
def test_binarizers_without_sign_activations_keep_their_float_path(tiny_config, binarizer):
    unit = BinaryConv2d(8, 8, 3, BINARIZERS[binarizer])
    assert not unit.use_packed_kernel() and unit.packed_filters is None
    model = BiDiffSRUNet(**tiny_config, binarizer=binarizer)
    kept = model.use_packed_kernels()
    assert kept and all(isinstance(model.get_submodule(n), BinaryConv2d) for n in kept)


def test_filters_with_two_magnitudes_are_refused():
    w = torch.ones(2, 3, 3, 3)
    w[0, 0, 0, 0] = 2.0
    with pytest.raises(ValueError, match="more than one magnitude"):
        PackedFilters(w, None, 1, 1)


@pytest.mark.parametrize("binarizer, blocks", [("bidiffsr", 0), ("reactnet", 0), ("bidm", 2)])
def test_whole_students_agree_and_the_packed_file_loads_onto_the_kernels(tiny_config, tmp_path, binarizer, blocks):
    model = BiDiffSRUNet(**tiny_config, binarizer=binarizer, cross_timestep_blocks=blocks).eval()
    x, cond, t = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.tensor([7, 1800])
    with torch.no_grad():
        reference, features = model(x, cond, t, return_features=True)
        loaded = unpack_student(save_packed(model, tmp_path / "s.safetensors"), packed_kernels=True)
        assert all(m.packed_filters is not None for m in loaded.modules() if isinstance(m, BinaryConv2d))
        torch.testing.assert_close(loaded(x, cond, t), reference, rtol=1e-4, atol=1e-4)
        if blocks:
            torch.testing.assert_close(loaded(x, cond, t, cache=features), model(x, cond, t, cache=features),
                                       rtol=1e-4, atol=1e-4)


def test_the_pipeline_and_the_upscale_command_run_packed(tiny_config, tmp_path, capsys):
    folder = write_model_folder(BiDiffSRUNet(**tiny_config).eval(), DDPMProcess(), 4, tmp_path / "publish")
    lr = torch.rand(1, 3, 6, 5)
    reference = BiDiffSRPipeline.from_pretrained(folder)(lr, num_inference_steps=2, seed=3, output_type="pt")
    pipe = BiDiffSRPipeline.from_pretrained(folder, packed_kernels=True)
    assert all(m.packed_filters is not None for m in pipe.unet.modules() if isinstance(m, BinaryConv2d))
    packed = pipe(lr, num_inference_steps=2, seed=3, output_type="pt")
    torch.testing.assert_close(packed.images, reference.images, rtol=1e-4, atol=1e-4)

    Image.fromarray((torch.rand(7, 9, 3) * 255).byte().numpy()).save(tmp_path / "lr.png")
    args = [str(tmp_path / "lr.png"), str(tmp_path / "sr.png"), "--model", str(folder), "--steps", "2", "--quiet"]
    assert upscale.main(args + ["--device", "cpu", "--packed"]) == 0
    assert Image.open(tmp_path / "sr.png").size == (36, 28)
    with pytest.raises(SystemExit):
        upscale.main(args + ["--device", "cpu", "--dtype", "bfloat16", "--packed", "--overwrite"])
    assert "--packed runs on the CPU in float32" in capsys.readouterr().err


def test_a_failed_build_falls_back_to_the_float_path_with_one_warning(tiny_config, monkeypatch):
    """No compiler (or none that builds): a warning naming why, the float path, the same outputs; never a traceback."""
    import torch.utils.cpp_extension

    from students import packed_conv

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(packed_conv, "_loaded", None)  # put back after the test, so nothing loads twice
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    model = BiDiffSRUNet(**tiny_config).eval()
    x = torch.randn(1, 3, 16, 16)
    expected = model(x, x, torch.tensor([7]))
    with pytest.warns(UserWarning, match="could not be built .*c\\+\\+: command not found.*the float path runs"):
        kept = model.use_packed_kernels()
    assert kept and all(m.packed_filters is None for m in model.modules() if hasattr(m, "packed_filters"))
    assert torch.equal(model(x, x, torch.tensor([7])), expected)


def test_a_compiler_without_openmp_builds_one_thread_kernels_with_a_warning(monkeypatch):
    import torch.utils.cpp_extension

    from students import packed_conv

    real, flags = torch.utils.cpp_extension.load, []

    def no_openmp(**kwargs):
        flags.append(kwargs["extra_cflags"])
        if "-fopenmp" in kwargs["extra_cflags"]:
            raise RuntimeError("clang: error: unsupported option '-fopenmp'")
        return real(**kwargs)

    monkeypatch.setattr(packed_conv, "_loaded", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_openmp)
    with pytest.warns(UserWarning, match="built without OpenMP .*unsupported option '-fopenmp'.*one thread"):
        module = packed_conv.kernels()
    assert hasattr(module, "binary_conv2d") and flags == [cflags for _, cflags, _ in packed_conv.BUILDS]
    assert "-fopenmp" in flags[0] and "-fopenmp" not in flags[1]


def test_the_kernels_load_once_per_process(monkeypatch):
    """torch rebuilds an extension loaded twice under one name in one process, so a second load must never happen."""
    import torch.utils.cpp_extension

    from students import packed_conv

    calls = []
    monkeypatch.setattr(packed_conv, "_loaded", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kwargs: calls.append(kwargs) or object())
    first = packed_conv.kernels()
    assert packed_conv.kernels() is first and len(calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize("cflags", ["-mno-avx2", "-mno-avx512f"])
def test_the_paths_without_avx512_agree_with_the_float_emulation(tiny_config, tmp_path, cflags):
    """The source's scalar path (what ARM and old x86 compile; -mno-avx2) and its AVX2 path (x86 without AVX-512's
    vector popcount; -mno-avx512f), each built here in a fresh process."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import torch
from conftest import TINY_STUDENT
from students.bidiffsr import BiDiffSRUNet
from students import packed_conv
model = BiDiffSRUNet(**TINY_STUDENT).eval()
x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
expected = model(x, x, torch.tensor([5]))
model.use_packed_kernels()
assert any(m.packed_filters is not None for m in model.modules() if hasattr(m, "packed_filters"))
print((model(x, x, torch.tensor([5])) - expected).abs().max().item(), packed_conv.kernels().__file__)
"""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}:{root / 'tests'}", "BIDISTILL_PACKED_CFLAGS": cflags}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    difference, library = result.stdout.split()
    assert float(difference) < 1e-4 and library != ""
