"""Image-quality metrics of the BI-DiffSR protocol: PSNR and SSIM on the Y channel, LPIPS-alex.

All metrics take images as produced for saving: clamp to [0, 1], x255, round (uint8 values). PSNR/SSIM drop
`crop_border` pixels on every side and use Y = 16 + 65.481 R + 128.553 G + 24.966 B (BT.601, MATLAB convention),
SSIM with an 11x11 Gaussian window (sigma 1.5) and valid filtering, as BasicSR. LPIPS uses the `lpips` package with
an AlexNet backbone loaded from a local file (`BIDISTILL_LPIPS_ALEX` or the recipe's `eval.lpips_backbone`) or the
package's own download; it never runs on a random backbone.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

LPIPS_ENV = "BIDISTILL_LPIPS_ALEX"
_ALEX_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}  # torchvision alexnet.features index -> lpips slice


def quantize(img: Tensor) -> Tensor:
    """[0, 1] float -> uint8 levels (as float64): clamp, x255, round."""
    return (img.clamp(0, 1) * 255).round().double()


def rgb_to_y(img255: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 255] -> (B, 1, H, W) Y in [16, 235], not re-rounded."""
    w = torch.tensor([65.481, 128.553, 24.966], dtype=img255.dtype, device=img255.device).reshape(1, 3, 1, 1)
    return 16.0 + (img255 / 255.0 * w).sum(dim=1, keepdim=True)


def _crop(img: Tensor, border: int) -> Tensor:
    return img[..., border:-border, border:-border] if border > 0 else img


def psnr_y(sr: Tensor, hr: Tensor, crop_border: int) -> Tensor:
    """Per-image PSNR (dB) on Y; `inf` where the images are identical."""
    a, b = (_crop(rgb_to_y(quantize(x)), crop_border) for x in (sr, hr))
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(255.0**2 / mse)


SSIM_WINDOW = 11


def _gaussian_window(device) -> Tensor:
    g = torch.exp(-((torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_y(sr: Tensor, hr: Tensor, crop_border: int) -> Tensor:
    """Per-image SSIM on Y (11x11 Gaussian, sigma 1.5, valid filtering, C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 255)."""
    a, b = (_crop(rgb_to_y(quantize(x)), crop_border) for x in (sr, hr))
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least 11x11 pixels after removing a {crop_border}-pixel border; "
                         f"got {a.shape[-1]}x{a.shape[-2]}")
    win = _gaussian_window(a.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    var_a = F.conv2d(a * a, win) - mu_a**2
    var_b = F.conv2d(b * b, win) - mu_b**2
    cov = F.conv2d(a * b, win) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)


class LPIPSUnavailable(RuntimeError):
    pass


def load_lpips(backbone_file: str | Path | None = None, device: str | torch.device = "cpu"):
    """LPIPS-alex v0.1 with the ImageNet AlexNet backbone from `backbone_file` (or $BIDISTILL_LPIPS_ALEX); without
    one, the `lpips` package downloads torchvision's backbone, and a failure says how to supply a file."""
    import lpips  # imported when used: it loads torchvision's models

    warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning,
                            module="torchvision.models._utils")  # lpips 0.1.4 still calls alexnet(pretrained=...)
    backbone_file = backbone_file or os.environ.get(LPIPS_ENV) or None
    if backbone_file:
        path = Path(backbone_file)
        if not path.is_file():
            raise LPIPSUnavailable(f"LPIPS backbone file {path} does not exist (set by eval.lpips_backbone or "
                                   f"${LPIPS_ENV})")
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.net.load_state_dict(
                {f"slice{s}.{i}.{t}": state[f"{i}.{t}"] for i, s in _ALEX_SLICES.items() for t in ("weight", "bias")},
                strict=True,
            )
        except (KeyError, RuntimeError) as err:
            raise LPIPSUnavailable(f"{path} is not a torchvision alexnet.features state dict: {err}") from None
    else:
        try:
            model = lpips.LPIPS(net="alex", version="0.1", verbose=False)
        except Exception as err:  # no network, no cached torchvision weights
            raise LPIPSUnavailable(
                f"LPIPS needs the ImageNet AlexNet backbone and could not download it ({type(err).__name__}); "
                f"point eval.lpips_backbone or ${LPIPS_ENV} at a torchvision alexnet.features state dict"
            ) from None
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def lpips_distance(model, sr: Tensor, hr: Tensor, crop_border: int) -> Tensor:
    """Per-image LPIPS on the 8-bit images, cropping H, W down to multiples of `crop_border` (the official quirk)."""
    h, w = sr.shape[-2:]
    if crop_border > 0:
        h, w = h - h % crop_border, w - w % crop_border
    a, b = (quantize(x)[..., :h, :w].float() / 255.0 for x in (sr, hr))
    return model(a, b, normalize=True).flatten()
