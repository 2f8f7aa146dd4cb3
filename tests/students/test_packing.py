"""Packed 1-bit checkpoints: bit packing, exact reconstruction for every binarizer, size accounting."""

import pytest
import torch
from safetensors import safe_open

from students.bidiffsr import BiDiffSRUNet
from students.binarizers import BINARIZERS
from students.binary import BinaryConv2d
from students.complexity import count_params
from students.packing import pack_bits, save_packed, unpack_bits, unpack_student


def test_pack_bits_round_trip_and_order():
    bits = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.tolist() == [0b10000001, 0b11000000]
    assert torch.equal(unpack_bits(packed, 11), bits)


@pytest.mark.parametrize("binarizer", sorted(n for n, b in BINARIZERS.items() if b.binary))
def test_unpacked_student_is_bit_identical(tiny_config, binarizer, tmp_path):
    model = BiDiffSRUNet(**tiny_config, binarizer=binarizer).eval()
    model.set_training_progress(0.7)
    conv = next(m for m in model.modules() if isinstance(m, BinaryConv2d))
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 0.0  # sign(0) = 0 must survive packing
    path = save_packed(model, tmp_path / "student.safetensors")
    loaded = unpack_student(path)
    x, cond = torch.randn(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    t = torch.tensor([7, 1800])
    assert torch.equal(model(x, cond, t), loaded(x, cond, t))
    assert loaded.config.binarizer == binarizer


def test_packed_file_is_close_to_the_paper_rule_size(tiny_config, tmp_path):
    model = BiDiffSRUNet(**{**tiny_config, "base_channels": 32, "norm_groups": 8, "channel_mults": (1, 2, 4),
                            "image_size": 64, "fp_resolutions": (64,)})
    path = save_packed(model, tmp_path / "s.safetensors")
    binary, fp = count_params(model)
    with safe_open(str(path), "pt") as f:
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
        n_bits = sum(f.get_tensor(k).numel() for k in f.keys() if k.endswith(".weight_bits"))
    assert n_bits == sum((m.weight.numel() + 7) // 8 for m in model.modules() if isinstance(m, BinaryConv2d))
    n_scales = sum(m.out_channels for m in model.modules() if isinstance(m, BinaryConv2d))
    assert stored == n_bits + 4 * fp + 4 * n_scales  # 1 bit per binary weight, fp32 for the rest and the scales
    assert binary / 8 <= n_bits < binary / 8 + 56


def test_the_full_precision_twin_is_not_packed(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="binarizer='none'.* no binarized convolution to pack"):
        save_packed(BiDiffSRUNet(**tiny_config, binarizer="none"), tmp_path / "twin.safetensors")
    assert not (tmp_path / "twin.safetensors").exists()


def test_not_a_packed_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="is not a packed BiDistill student"):
        unpack_student(tmp_path / "x.safetensors")


def test_one_loader_reads_the_published_folder_and_its_packed_file(tiny_config, tmp_path):
    from pipeline.loading import load_student
    from pipeline.publish import write_model_folder
    from teachers import DDPMProcess

    torch.manual_seed(0)
    folder = write_model_folder(BiDiffSRUNet(**tiny_config).eval(), DDPMProcess(), 4, tmp_path / "publish")
    x, cond, t = torch.randn(2, 3, 16, 16), torch.rand(2, 3, 16, 16), torch.tensor([3, 900])
    outputs = []
    for path, packed in ((folder, False), (folder / "student_1bit.safetensors", False),
                         (folder / "student_1bit.safetensors", True)):
        student, process = load_student(path, packed_kernels=packed)
        assert isinstance(process, DDPMProcess)
        with torch.no_grad():
            outputs.append(student.eval()(x, cond, t))
    assert torch.equal(outputs[0], outputs[1])  # the packed file holds the same binarized weights
    torch.testing.assert_close(outputs[2], outputs[0], rtol=1e-4, atol=1e-4)  # packed kernels: summation order
    with pytest.raises(ValueError, match="neither a saved student"):
        load_student(tmp_path)
