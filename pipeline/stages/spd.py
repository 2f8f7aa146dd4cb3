"""Space Patched Distillation ("BiDM: Pushing the Limit of Quantization for Diffusion Models"; Xingyu-Zheng/BiDM).

For each feature pair (B, C, H, W) and a p x p patch grid: per patch, the Gram matrix of patch rows within each
channel, G[b, c] = P[b, c] P[b, c]^T (L_h x L_h); normalised by the Frobenius norm of the whole (B, C, L_h, L_h)
tensor; the patch loss is the unsquared Frobenius norm of the student/teacher difference. The total is the sum over
pairs and patches divided by (pairs x p^2). For square features this is the official code exactly; rectangular ones
use L_h = H / p rows and L_w = W / p columns per patch.
"""

from __future__ import annotations

from torch import Tensor


def patch_gram(feature: Tensor, patches: int) -> Tensor:
    """(B, C, H, W) -> (p, p, B, C, L_h, L_h) normalised patch Gram matrices, in float32."""
    b, c, h, w = feature.shape
    if h % patches or w % patches:
        raise ValueError(f"SPD needs feature sides divisible by the patch grid {patches}; got {h}x{w} "
                         "(use a training patch size whose feature maps divide evenly)")
    lh, lw = h // patches, w // patches
    p = feature.float().reshape(b, c, patches, lh, patches, lw).permute(2, 4, 0, 1, 3, 5)
    gram = p @ p.transpose(-1, -2)
    norm = gram.flatten(2).norm(dim=2).clamp_min(1e-12)[..., None, None, None, None]
    return gram / norm


def spd_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], names: list[str], patches: int = 4) -> Tensor:
    """Mean over the named feature pairs and the p^2 patches of ||G_s - G_t||_F (teacher features detached)."""
    total = 0.0
    for name in names:
        diff = patch_gram(student[name], patches) - patch_gram(teacher[name].detach(), patches)
        total = total + diff.flatten(2).norm(dim=2).sum()
    return total / (len(names) * patches**2)
