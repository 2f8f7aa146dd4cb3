"""Real-ESRGAN degradations: each operator against the released code's behaviour re-stated for fixed random parameters
(basicsr's kernels, filter2D and noise, DiffJPEG written out block by block), JPEG against libjpeg within a bound,
the distributions of a batch's draws, reading a release option file, and the recipe keys."""

import io
import math
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from scipy import special

from pipeline.degradations import (KERNEL_KINDS, DegradationError, RealESRGANDegradation, add_gaussian_noise,
                                   add_poisson_noise, filter2d, jpeg, random_kernels, shaped_kernels, sinc_kernels)
from pipeline.preflight import load_checked
from pipeline.recipe import RecipeError


# ---- basicsr's kernels, re-stated in numpy -----------------------------------------------------------------------
def mesh_grid(k):
    ax = np.arange(-k // 2 + 1.0, k // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def basicsr_kernel(kind, k, sx, sy, theta, beta):
    grid = mesh_grid(k)
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sigma = np.array([[sx**2, 0], [0, sx**2]])
    else:
        d = np.array([[sx**2, 0], [0, sy**2]])
        u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        sigma = u @ d @ u.T
    q = np.sum(np.dot(grid, np.linalg.inv(sigma)) * grid, 2)
    if kind in ("iso", "aniso"):
        kernel = np.exp(-0.5 * q)
    elif kind.startswith("generalized"):
        kernel = np.exp(-0.5 * np.power(q, beta))
    else:
        kernel = np.reciprocal(np.power(q, beta) + 1)
    return kernel / kernel.sum()


def basicsr_sinc(cutoff, k, pad_to):
    c = (k - 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = np.fromfunction(lambda x, y: cutoff * special.j1(cutoff * np.sqrt((x - c) ** 2 + (y - c) ** 2))
                                 / (2 * np.pi * np.sqrt((x - c) ** 2 + (y - c) ** 2)), [k, k])
    kernel[(k - 1) // 2, (k - 1) // 2] = cutoff**2 / (4 * np.pi)
    kernel = kernel / kernel.sum()
    pad = (pad_to - k) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def pad_kernel(kernel, pad_to):
    pad = (pad_to - kernel.shape[0]) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def test_kernels_equal_basicsr_for_fixed_parameters():
    cases = [(kind, k, 1.7, 0.6, 0.9, b) for kind in KERNEL_KINDS for k, b in ((7, 0.7), (19, 2.5))]
    kinds = torch.tensor([KERNEL_KINDS.index(c[0]) for c in cases])
    sizes = torch.tensor([c[1] for c in cases])
    ours = shaped_kernels(kinds, sizes, torch.tensor([c[2] for c in cases], dtype=torch.float64),
                          torch.tensor([c[3] for c in cases], dtype=torch.float64),
                          torch.tensor([c[4] for c in cases], dtype=torch.float64),
                          torch.tensor([c[5] for c in cases], dtype=torch.float64), 21)
    for kernel, (kind, k, sx, sy, theta, beta) in zip(ours, cases):
        expected = pad_kernel(basicsr_kernel(kind, k, sx, sy, theta, beta), 21)
        np.testing.assert_allclose(kernel.numpy(), expected, atol=1e-6, err_msg=f"{kind} {k}")
    sinc = sinc_kernels(torch.tensor([3, 9, 13]), torch.tensor([1.2, 2.0, 0.7], dtype=torch.float64), 15)
    for kernel, (k, cutoff) in zip(sinc, ((3, 1.2), (9, 2.0), (13, 0.7))):
        np.testing.assert_allclose(kernel.numpy(), basicsr_sinc(cutoff, k, 15), atol=1e-6)


def test_filter2d_is_a_per_image_reflect_padded_convolution():
    image, kernels = torch.rand(3, 3, 20, 17), torch.rand(3, 7, 7)
    ours = filter2d(image, kernels)
    for i in range(3):  # basicsr's filter2D: reflect pad k // 2, correlate each channel with its image's kernel
        padded = F.pad(image[i : i + 1], (3, 3, 3, 3), mode="reflect")
        expected = F.conv2d(padded.transpose(0, 1), kernels[i][None, None]).transpose(0, 1)
        torch.testing.assert_close(ours[i : i + 1], expected)


def test_gaussian_and_poisson_noise_equal_basicsr_for_fixed_draws():
    image = torch.rand(3, 3, 16, 12)
    sigma, gray = torch.tensor([5.0, 20.0, 30.0], dtype=torch.float64), torch.tensor([False, True, False])
    g = torch.Generator().manual_seed(1)
    colour, grey = torch.randn(image.shape, generator=g), torch.randn((3, 1, 16, 12), generator=g)
    noise = torch.where(gray[:, None, None, None], grey.expand(3, 3, 16, 12), colour)
    expected = (image + noise * (sigma.float() / 255)[:, None, None, None]).clamp(0, 1)
    torch.testing.assert_close(add_gaussian_noise(image, sigma, gray, torch.Generator().manual_seed(1)), expected)

    scale = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    rounded = torch.clamp((image * 255.0).round(), 0, 255) / 255.0  # generate_poisson_noise_pt, its loops
    vals = torch.tensor([2 ** np.ceil(np.log2(len(torch.unique(rounded[i])))) for i in range(3)],
                        dtype=torch.float32).view(3, 1, 1, 1)
    out_colour = torch.poisson(rounded * vals, generator=g) / vals - rounded
    luma = 0.2989 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]
    luma = torch.clamp((luma * 255.0).round(), 0, 255) / 255.0
    vals_luma = torch.tensor([2 ** np.ceil(np.log2(len(torch.unique(luma[i])))) for i in range(3)],
                             dtype=torch.float32).view(3, 1, 1, 1)
    out_grey = torch.poisson(luma * vals_luma, generator=g) / vals_luma - luma
    noise = torch.where(gray[:, None, None, None], out_grey.expand(3, 3, 16, 12), out_colour)
    expected = (image + noise * scale.float()[:, None, None, None]).clamp(0, 1)
    torch.testing.assert_close(add_poisson_noise(image, scale, gray, torch.Generator().manual_seed(2)), expected)


# ---- DiffJPEG, written out block by block --------------------------------------------------------------------------
Y_TABLE = np.array([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
                    [14, 13, 16, 24, 40, 57, 69, 56],
                    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77],
                    [24, 35, 55, 64, 81, 104, 113, 92], [49, 64, 78, 87, 103, 121, 120, 101],
                    [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float64).T
C_TABLE = np.full((8, 8), 99.0)
C_TABLE[:4, :4] = np.array([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]).T


def diffjpeg(image: np.ndarray, quality: float) -> np.ndarray:
    """basicsr's DiffJPEG(differentiable=False) on one (3, H, W) image in [0, 1], H and W multiples of 16."""
    factor = (5000.0 / quality if quality < 50 else 200.0 - quality * 2) / 100.0
    x = image.transpose(1, 2, 0) * 255
    ycc = x @ np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]).T
    ycc = ycc + np.array([0.0, 128.0, 128.0])
    planes = [ycc[..., 0]] + [ycc[..., c].reshape(ycc.shape[0] // 2, 2, ycc.shape[1] // 2, 2).mean(axis=(1, 3))
                              for c in (1, 2)]
    alpha = np.array([1 / np.sqrt(2)] + [1.0] * 7)
    out = []
    for plane, table in zip(planes, (Y_TABLE, C_TABLE, C_TABLE)):
        result = np.zeros_like(plane)
        for by in range(0, plane.shape[0], 8):
            for bx in range(0, plane.shape[1], 8):
                block = plane[by : by + 8, bx : bx + 8] - 128
                coeff = np.zeros((8, 8))
                for u in range(8):
                    for v in range(8):
                        basis = np.outer(np.cos((2 * np.arange(8) + 1) * u * np.pi / 16),
                                         np.cos((2 * np.arange(8) + 1) * v * np.pi / 16))
                        coeff[u, v] = 0.25 * alpha[u] * alpha[v] * np.sum(block * basis)
                coeff = np.round(coeff / (table * factor)) * (table * factor)
                for px in range(8):
                    for py in range(8):
                        basis = np.outer(np.cos((2 * px + 1) * np.arange(8) * np.pi / 16),
                                         np.cos((2 * py + 1) * np.arange(8) * np.pi / 16))
                        result[by + px, bx + py] = 0.25 * np.sum(np.outer(alpha, alpha) * coeff * basis) + 128
        out.append(result)
    y, cb, cr = out[0], *(np.repeat(np.repeat(c, 2, axis=0), 2, axis=1) - 128 for c in out[1:])
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb])
    return np.clip(rgb, 0, 255) / 255


def test_jpeg_equals_diffjpeg_written_out_and_stays_near_libjpeg():
    torch.manual_seed(0)
    smooth = F.interpolate(torch.rand(2, 3, 8, 8), size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    qualities = torch.tensor([30.0, 77.5])
    ours = jpeg(smooth, qualities)
    for i, q in enumerate(qualities.tolist()):
        np.testing.assert_allclose(ours[i].numpy(), diffjpeg(smooth[i].double().numpy(), q), atol=2e-4)
    # libjpeg (PIL, 4:2:0, integer tables, fancy upsampling) is a different coder of the same standard: close, not equal
    photo = torch.from_numpy(np.asarray(Image.open(_bundled_photo()).convert("RGB"), dtype=np.float32) / 255)
    photo = photo[:96, :96].permute(2, 0, 1)[None].contiguous()
    for quality in (30, 90):
        buffer = io.BytesIO()
        Image.fromarray((photo[0] * 255).round().byte().permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality,
                                                                                         subsampling=2)
        libjpeg = torch.from_numpy(np.array(Image.open(buffer), dtype=np.float32) / 255).permute(2, 0, 1)
        ours = jpeg(photo, torch.tensor([float(quality)]))[0]
        error_ours, error_lib = (ours - photo[0]).abs().mean(), (libjpeg - photo[0]).abs().mean()
        assert (ours - libjpeg).abs().mean() < 0.02, quality  # measured 0.009 (q 30) / 0.005 (q 90)
        assert 0.5 < error_ours / error_lib < 2.0, quality  # the same amount of compression damage


def _bundled_photo():
    import skimage.data

    return skimage.data.data_dir + "/astronaut.png"


# ---- the whole degradation -----------------------------------------------------------------------------------------
def test_a_batch_draws_from_the_configured_distributions():
    d = RealESRGANDegradation()
    draws = {}
    kernels = random_kernels(4000, d.kernel1, torch.Generator().manual_seed(0), "cpu", draws, "kernel1")
    k = draws["kernel1"]
    sizes = k["sizes"]
    assert set(sizes.tolist()) == set(range(3, 21, 2))  # the release's range(3, 21, 2), padded to 21
    assert abs(sizes.float().mean().item() - 11) < 0.3
    kinds = k["kinds"]
    assert abs((kinds == -1).float().mean().item() - d.kernel1.sinc_prob) < 0.02
    shaped = kinds[kinds >= 0]
    for i, p in enumerate(d.kernel1.probs):
        assert abs((shaped == i).float().mean().item() - p) < 0.03, KERNEL_KINDS[i]
    assert k["sigma_x"].min() >= 0.2 and k["sigma_x"].max() <= 3.0
    assert kernels.shape == (4000, 21, 21) and torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(4000), atol=1e-5)
    assert (kernels[sizes == 3][:, :9].abs().sum() == 0)  # zero outside the drawn support

    qualities, sigmas, grays, final = [], [], [], []
    for seed in range(60):
        draws = {}
        lr = d(torch.rand(8, 3, 64, 64), torch.Generator().manual_seed(seed), random.Random(seed), draws)
        assert lr.shape == (8, 3, 16, 16) and torch.equal(lr, (lr * 255).round() / 255)
        qualities.append(draws["jpeg_quality"])
        sigmas.append(draws["pass1"]["sigma"])
        grays.append(draws["pass1"]["gray"])
        final.append(draws["final_sinc"])
    q, s = torch.cat(qualities), torch.cat(sigmas)
    assert 30 <= q.min() and q.max() <= 95 and abs(q.mean().item() - 62.5) < 2.5
    assert 1 <= s.min() and s.max() <= 30 and abs(s.mean().item() - 15.5) < 1.5
    assert abs(torch.cat(grays).float().mean().item() - 0.4) < 0.06
    assert abs(torch.cat(final).float().mean().item() - 0.8) < 0.06


def test_the_same_seeds_give_the_same_lr_and_other_seeds_others():
    d, hr = RealESRGANDegradation(), torch.rand(4, 3, 64, 64)
    a = d(hr, torch.Generator().manual_seed(5), random.Random(5))
    assert torch.equal(a, d(hr, torch.Generator().manual_seed(5), random.Random(5)))
    assert not torch.equal(a, d(hr, torch.Generator().manual_seed(6), random.Random(6)))
    with pytest.raises(DegradationError, match="at least 64 pixels"):
        d(torch.rand(1, 3, 32, 32), torch.Generator(), random.Random(0))


RELEASE = {  # zsyOAOA/ResShift configs/realsr_swinunet_realesrgan256.yaml, its degradation parts
    "degradation": {"sf": 4, "resize_prob": [0.2, 0.7, 0.1], "resize_range": [0.15, 1.5], "gaussian_noise_prob": 0.5,
                    "noise_range": [1, 30], "poisson_scale_range": [0.05, 3.0], "gray_noise_prob": 0.4,
                    "jpeg_range": [30, 95], "second_order_prob": 0.5, "second_blur_prob": 0.8,
                    "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.3, 1.2], "gaussian_noise_prob2": 0.5,
                    "noise_range2": [1, 25], "poisson_scale_range2": [0.05, 2.5], "gray_noise_prob2": 0.4,
                    "jpeg_range2": [30, 95], "gt_size": 256, "resize_back": False, "use_sharp": False},
    "data": {"train": {"type": "realesrgan", "params": {
        "blur_kernel_size": 21, "kernel_list": list(KERNEL_KINDS), "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
        "sinc_prob": 0.1, "blur_sigma": [0.2, 3.0], "betag_range": [0.5, 4.0], "betap_range": [1, 2.0],
        "blur_kernel_size2": 15, "kernel_list2": list(KERNEL_KINDS),
        "kernel_prob2": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03], "sinc_prob2": 0.1, "blur_sigma2": [0.2, 1.5],
        "betag_range2": [0.5, 4.0], "betap_range2": [1, 2.0], "final_sinc_prob": 0.8, "gt_size": 256}}},
}


def test_the_release_option_file_reads_as_the_defaults_and_errors_name_the_key():
    assert RealESRGANDegradation.from_options(RELEASE, "r.yaml", 4) == RealESRGANDegradation()
    changed = yaml.safe_load(yaml.safe_dump(RELEASE))
    changed["degradation"]["jpeg_range2"] = [60, 95]
    changed["data"]["train"]["params"]["blur_sigma2"] = [0.5, 1.0]
    d = RealESRGANDegradation.from_options(changed, "r.yaml", 4)
    assert d.pass2.jpeg_range == (60, 95) and d.kernel2.sigma == (0.5, 1.0) and d.pass1.jpeg_range == (30, 95)
    for section, key, value, message in [
        ("degradation", "use_sharp", True, "degradation.use_sharp = True is not supported"),
        ("degradation", "blur_kernel", 3, "degradation.blur_kernel is not a Real-ESRGAN setting"),
        ("degradation", "resize_prob", [0.5, 0.6, 0.1], "degradation.resize_prob = (0.5, 0.6, 0.1): must be 3 prob"),
        ("degradation", "sf", 2, "degradation.sf = 2, but run.scale is 4"),
        ("params", "kernel_list2", ["iso", "box"] + list(KERNEL_KINDS[2:]), "kernel_list2: 'box' is not one of"),
        ("params", "blur_kernel_size", 20, "blur_kernel_size = 20: must be odd"),
    ]:
        bad = yaml.safe_load(yaml.safe_dump(RELEASE))
        (bad["degradation"] if section == "degradation" else bad["data"]["train"]["params"])[key] = value
        with pytest.raises(DegradationError, match=re.escape(message)):
            RealESRGANDegradation.from_options(bad, "r.yaml", 4)


def test_recipe_keys_are_checked_before_training(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    tiny = root / "recipes" / "tiny.toml"
    out = [f"run.output_dir=\"{tmp_path / 'run'}\""]
    with pytest.raises(RecipeError, match=r"data.degradation: must be one of \('bicubic', 'realesrgan'\), got 'jpeg'"):
        load_checked(tiny, out + ["data.degradation=jpeg"])
    with pytest.raises(RecipeError, match="data.val_crop: must be 0 or at least 64 with realesrgan"):
        load_checked(tiny, out + ["data.degradation=realesrgan", "data.val_crop=32"])
    out.append("data.val_crop=64")
    with pytest.raises(RecipeError, match="patch_size: must be at least 64 with realesrgan"):
        load_checked(tiny, out + ["data.degradation=realesrgan", "data.patch_size=32"])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"degradation": {"noise_range": [5, 1]}}))
    with pytest.raises(RecipeError, match=r"data.degradation_options: .*bad.yaml: degradation.noise_range = \(5, 1\)"):
        load_checked(tiny, out + ["data.degradation=realesrgan", "data.patch_size=64",
                                 f"data.degradation_options=\"{tmp_path / 'bad.yaml'}\""])
    with pytest.raises(RecipeError, match="data.degradation_options: only applies"):
        load_checked(tiny, out + [f"data.degradation_options=\"{tmp_path / 'bad.yaml'}\""])
    checked = load_checked(tiny, out + ["data.degradation=realesrgan", "data.patch_size=64"])
    assert math.isclose(checked.recipe.data.patch_size, 64)
