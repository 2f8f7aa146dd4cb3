"""Bicubic resizing and metrics against the benchmark packs and the published bicubic row (data.md, evaluation.md)."""

import math
from pathlib import Path

import pytest
import torch

from pipeline.data import load_validation, to_uint8_tensor
from pipeline.evaluate import evaluate
from pipeline.metrics import LPIPSUnavailable, load_lpips, lpips_distance, psnr_y, ssim_y
from pipeline.resize import imresize_up, make_lr, upsample_cond
from PIL import Image

SHARED = Path(__file__).resolve().parents[3] / "shared"
ALEX = SHARED / "weights" / "alexnet_features_imagenet1k_v1.pth"
needs_shared = pytest.mark.skipif(not (SHARED / "data" / "Set5").is_dir(), reason="../shared/data not present")


@needs_shared
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_make_lr_matches_the_benchmark_lr_pack(scale):
    for hr_file in sorted((SHARED / "data" / "Set5").glob("*.png")):
        hr = to_uint8_tensor(Image.open(hr_file))
        lr_file = SHARED / "data" / "Set5_LR_bicubic" / f"X{scale}" / f"{hr_file.stem}x{scale}.png"
        ref = to_uint8_tensor(Image.open(lr_file))
        diff = (make_lr(hr, scale).int() - ref.int()).abs()
        assert diff.shape == ref.shape
        assert diff.max() <= 2 and (diff > 0).float().mean() < 0.01, hr_file.name


def test_condition_is_half_pixel_bicubic_a075():
    """OpenCV INTER_CUBIC: output pixel 0 of a x2 upsampling samples source -0.25 with a = -0.75 weights."""
    lr = torch.tensor([[[[0.0, 1.0, 0.0, 0.0]]]]).expand(1, 1, 4, 4).contiguous()
    out = upsample_cond(lr, 2)[0, 0, 0]

    def k(x, a=-0.75):
        x = abs(x)
        return (a + 2) * x**3 - (a + 3) * x**2 + 1 if x <= 1 else a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a

    # x = (o + 0.5) / 2 - 0.5; taps clamp at the border; pixel 1 holds the 1.0
    for o in range(8):
        x = (o + 0.5) / 2 - 0.5
        expected = sum(k(x - j) * (1.0 if min(max(j, 0), 3) == 1 else 0.0)
                       for j in range(math.floor(x) - 1, math.floor(x) + 3))
        assert out[o].item() == pytest.approx(expected, abs=1e-5)


@needs_shared
@pytest.mark.parametrize("scale, psnr, ssim", [(4, 28.43, 0.8111), (2, 33.67, 0.9303)])
def test_bicubic_row_reproduces_the_paper(scale, psnr, ssim):
    images = load_validation(SHARED / "data" / "Set5", scale, SHARED / "data" / "Set5_LR_bicubic" / f"X{scale}")
    result = evaluate(images, scale)["mean"]["bicubic"]
    assert result["psnr"] == pytest.approx(psnr, abs=0.015)
    assert result["ssim"] == pytest.approx(ssim, abs=0.0005)


def test_psnr_facts():
    img = torch.rand(1, 3, 20, 20)
    assert math.isinf(psnr_y(img, img, 4).item())
    # +1 grey level on every RGB channel changes Y by (65.481 + 128.553 + 24.966) / 255 = 219/255 levels
    q = (img * 254).round() / 255
    shifted = (q * 255 + 1) / 255
    expected = 10 * math.log10(255**2 / (219 / 255) ** 2)
    assert psnr_y(shifted, q, 0).item() == pytest.approx(expected, abs=1e-6)
    assert psnr_y(shifted, q, 0).item() == pytest.approx(49.45, abs=0.01)


def test_one_grey_level_in_y_is_48_13_db():
    from pipeline.metrics import rgb_to_y

    a = torch.full((1, 3, 8, 8), 100.0, dtype=torch.float64)
    y = rgb_to_y(a)
    mse = 1.0
    assert 10 * math.log10(255**2 / mse) == pytest.approx(48.13, abs=0.01)
    assert y.min() >= 16 and y.max() <= 235


def test_ssim_identical_is_one_and_noise_lowers_it():
    img = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(ssim_y(img, img, 2), torch.ones(2, dtype=torch.float64))
    assert (ssim_y((img + 0.1 * torch.randn_like(img)).clamp(0, 1), img, 2) < 0.95).all()
    with pytest.raises(ValueError, match="SSIM needs at least 11x11 pixels .* got 8x8"):
        ssim_y(img[..., :16, :16], img[..., :16, :16], 4)


@pytest.mark.skipif(not ALEX.is_file(), reason="shared LPIPS backbone not present")
def test_lpips_from_local_backbone():
    model = load_lpips(ALEX)
    img = torch.rand(1, 3, 32, 32)
    assert lpips_distance(model, img, img, 4).item() == pytest.approx(0.0, abs=1e-6)
    smooth = torch.linspace(0, 1, 32).reshape(1, 1, 1, 32).expand(1, 3, 32, 32)
    assert lpips_distance(model, img, smooth, 4).item() > 0.3


@needs_shared
@pytest.mark.skipif(not ALEX.is_file(), reason="shared LPIPS backbone not present")
def test_lpips_bicubic_x4_set5_near_the_paper():
    images = load_validation(SHARED / "data" / "Set5", 4, SHARED / "data" / "Set5_LR_bicubic" / "X4")
    lpips = evaluate(images, 4, lpips_model=load_lpips(ALEX))["mean"]["bicubic"]["lpips"]
    assert lpips == pytest.approx(0.3398, abs=0.002)


def test_lpips_backbone_errors(tmp_path):
    with pytest.raises(LPIPSUnavailable, match="missing.pth does not exist"):
        load_lpips(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(LPIPSUnavailable, match="not a torchvision alexnet.features state dict"):
        load_lpips(bad)


def test_matlab_upscale_preserves_constants():
    img = torch.full((1, 3, 5, 7), 0.5)
    torch.testing.assert_close(imresize_up(img, 3).float(), torch.full((1, 3, 15, 21), 0.5))
