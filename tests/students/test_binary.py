"""Sign functions, surrogate gradients and the binary conv unit (spec: bidiffsr.md section 5, binarizers.md)."""

import pytest
import torch
import torch.nn.functional as F

from students.binarizers import BINARIZERS, get_binarizer
from students.binary import ApproxSign, BinaryConv2d, ClipSign, EDESign, ede_coefficients
from students.timestep import timestep_group


def grad_of(fn, values):
    u = torch.tensor(values, requires_grad=True)
    fn(u).sum().backward()
    return u.grad.tolist()


def test_sign_of_zero_is_zero():
    assert ApproxSign.apply(torch.tensor([-2.0, 0.0, 3.0])).tolist() == [-1.0, 0.0, 1.0]


def test_approx_sign_surrogate_values():
    assert grad_of(ApproxSign.apply, [-0.5, 0.25, -1.2, 0.5, 1.5]) == pytest.approx([1.0, 1.5, 0.0, 1.0, 0.0])


def test_clip_ste_passes_only_inside_unit_interval():
    assert grad_of(ClipSign.apply, [-1.0, 0.3, 1.0, 1.01, -3.0]) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_ede_schedule_and_gradient():
    t0, k0 = ede_coefficients(torch.tensor(0.0))
    t1, k1 = ede_coefficients(torch.tensor(1.0))
    assert (t0.item(), k0.item()) == pytest.approx((0.1, 10.0))
    assert (t1.item(), k1.item()) == pytest.approx((10.0, 1.0))
    g = grad_of(lambda u: EDESign.apply(u, t1, k1), [0.0, 2.0])
    assert g[0] == pytest.approx(10.0) and g[1] == pytest.approx(10.0 * (1 - torch.tanh(torch.tensor(20.0)) ** 2))


def test_timestep_group_boundaries():
    t = torch.tensor([0, 399, 400, 799, 800, 1999])
    assert timestep_group(t, 5, 2000).tolist() == [0, 0, 1, 1, 2, 4]
    assert timestep_group(t.reshape(-1, 1), 5, 2000).shape == (6,)


def test_bi_conv_block_matches_reference_formula():
    """Fact 11: zero shifts, slope 0.25: PReLU(conv(sign(x), mean|W_o| sign(W))) + x, sign(0) = 0."""
    conv = BinaryConv2d(8, 8, 3, get_binarizer("bidiffsr"), shift_groups=5, activation_groups=5)
    x = torch.randn(2, 8, 6, 6)
    x[0, 0, 0, 0] = 0.0
    w = conv.weight
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = F.prelu(F.conv2d(torch.sign(x), alpha * torch.sign(w), padding=1), torch.full((8,), 0.25)) + x
    out = conv(x, torch.tensor([0, 3]))
    torch.testing.assert_close(out, expected)


def _weight_grad(name: str, weight: torch.Tensor, upstream: torch.Tensor, progress: float = 0.5) -> torch.Tensor:
    """dL/dW for L = sum(W_b * upstream), i.e. the gradient the binarizer hands the latent weight for dL/dW_b."""
    conv = BinaryConv2d(weight.shape[1], weight.shape[0], weight.shape[-1], get_binarizer(name))
    if hasattr(conv, "progress"):
        conv.progress.fill_(progress)
    with torch.no_grad():
        conv.weight.copy_(weight)
    (conv.binary_weight() * upstream).sum().backward()
    return conv.weight.grad


def _latent(shape=(4, 3, 3, 3)) -> torch.Tensor:
    w = torch.randn(shape) * 0.05
    w[0, 0, 0, 0], w[1, 1, 1, 1], w[2, 2, 2, 2] = 1.5, -1.0, 1.0  # outside, and on both edges of, the pass band
    return w


@pytest.mark.parametrize("name", ["bidiffsr", "bbcu", "reactnet", "bnn"])
def test_weight_gradient_is_clipped_and_excludes_scale(name):
    """Fact 13 (and the BBCU / ReActNet / BNN estimators): dL/dW = dL/dW_b * 1[|W| <= 1], no alpha."""
    w, g = _latent(), torch.randn(4, 3, 3, 3)
    grad = _weight_grad(name, w, g)
    torch.testing.assert_close(grad, g * (w.abs() <= 1), rtol=0, atol=0)
    assert grad[0, 0, 0, 0] == 0 and grad[1, 1, 1, 1] == g[1, 1, 1, 1] and grad[2, 2, 2, 2] == g[2, 2, 2, 2]


def test_dorefa_weight_gradient_is_identity():
    w, g = _latent(), torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(_weight_grad("dorefa", w, g), g, rtol=0, atol=0)


def test_xnor_weight_gradient_is_the_papers():
    """XNOR-Net: dC/dW = dC/dW_b (1/n + alpha 1[|W| <= 1]), alpha per filter, n = Cin kh kw."""
    w, g = _latent(), torch.randn(4, 3, 3, 3)
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(_weight_grad("xnor", w, g), g * (1 / 27 + alpha * (w.abs() <= 1)))


def test_irnet_weight_gradient_is_ede_through_the_standardisation():
    """IR-Net: W_b = s * EDE-sign((W - mean) / std), s detached: autograd through the standardisation."""
    w, g = _latent(), torch.randn(4, 3, 3, 3)
    t, k = ede_coefficients(torch.tensor(0.5))
    wr = w.clone().requires_grad_(True)
    flat = wr.reshape(4, -1)
    std = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)
    s = torch.pow(2.0, torch.round(torch.log2(std.detach().abs().mean(1, keepdim=True))))
    surrogate = k * torch.tanh(t * std)  # d/du = k t (1 - tanh^2(t u)): EDE's backward
    (s * surrogate * g.reshape(4, -1)).sum().backward()
    torch.testing.assert_close(_weight_grad("irnet", w, g), wr.grad)


def test_full_precision_twin_unit_is_a_plain_conv_with_the_students_extras():
    conv = BinaryConv2d(4, 4, 3, get_binarizer("none"), shift_groups=5, activation_groups=5)
    x = torch.randn(2, 4, 5, 5)
    expected = F.prelu(F.conv2d(x, conv.weight, padding=1), torch.full((4,), 0.25)) + x
    torch.testing.assert_close(conv(x, torch.tensor([0, 4])), expected)
    w, g = _latent(), torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(_weight_grad("none", w, g), g, rtol=0, atol=0)


def test_one_adam_step_matches_a_hand_written_update():
    """One Adam step on a BI-Conv unit's latent weight equals the textbook update computed from the official
    gradient dL/dW_b * 1[|W| <= 1]: the first step moves every weight inside the pass band by ~lr, not alpha * lr."""
    torch.manual_seed(1)
    conv = BinaryConv2d(8, 8, 3, get_binarizer("bidiffsr"))
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 1.2  # frozen by the clip
    x, target = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    w0 = conv.weight.detach().clone()

    # reference: dL/dW_b by autograd through a plain conv with W_b as a leaf, then the clip mask, then Adam by hand
    wb = (w0.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.sign(w0)).requires_grad_(True)
    a = torch.sign(x)
    y = F.prelu(F.conv2d(a, wb, padding=1), torch.full((8,), 0.25)) + x
    F.mse_loss(y, target).backward()
    grad = wb.grad * (w0.abs() <= 1)
    lr, (b1, b2), eps = 1e-3, (0.9, 0.99), 1e-8
    m, v = (1 - b1) * grad, (1 - b2) * grad**2
    expected = w0 - lr * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)

    opt = torch.optim.Adam([conv.weight], lr=lr, betas=(b1, b2), eps=eps)
    F.mse_loss(conv(x, None), target).backward()
    opt.step()
    clear = grad.abs() > 1e-5  # where |g| ~ eps, Adam's step amplifies float summation-order noise
    torch.testing.assert_close(conv.weight.detach()[clear], expected[clear])
    torch.testing.assert_close(conv.weight.detach(), expected, atol=2.1 * lr, rtol=0)
    moved = (conv.weight.detach() - w0).abs()
    assert moved[0, 0, 0, 0] == 0
    inside = grad.abs() > 1e-6
    assert moved[inside].mean() > 0.9 * lr, "binary latent weights should move by about lr on the first Adam step"


@pytest.mark.parametrize("name", sorted(BINARIZERS))
def test_gradients_reach_latent_weights(name):
    conv = BinaryConv2d(8, 8, 3, get_binarizer(name), shift_groups=1, activation_groups=1)
    if hasattr(conv, "progress"):
        conv.progress.fill_(0.5)
    x = torch.rand(2, 8, 5, 5) * 2 - 0.5  # values inside every surrogate's pass band
    conv(x, None).square().mean().backward()
    grad = conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0, f"{name}: no gradient reached the latent weights"


@pytest.mark.parametrize("name", sorted(n for n, b in BINARIZERS.items() if b.binary))
def test_binarized_weights_take_two_magnitudes_per_filter(name):
    conv = BinaryConv2d(6, 6, 3, get_binarizer(name))
    if hasattr(conv, "progress"):
        conv.progress.fill_(0.3)
    wb = conv.binary_weight().detach().reshape(6, -1)
    for row in wb:
        assert row.abs().unique().numel() == 1, f"{name}: a filter has more than one magnitude"


def test_dorefa_activations_are_zero_or_one_and_others_signed():
    x = torch.randn(1, 4, 5, 5)
    conv = BinaryConv2d(4, 4, 3, get_binarizer("dorefa"))
    assert set(conv.binarizer.quantize_input(x, conv).unique().tolist()) <= {0.0, 1.0}
    for name in ("bnn", "bbcu", "reactnet", "bidiffsr"):
        conv = BinaryConv2d(4, 4, 3, get_binarizer(name))
        assert set(conv.binarizer.quantize_input(x, conv).unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_irnet_scale_is_power_of_two():
    """Fact 5: mean |W_hat| 0.8 -> scale 1.0; 0.3 -> 0.25."""
    conv = BinaryConv2d(2, 2, 1, get_binarizer("irnet"))
    assert torch.pow(2.0, torch.round(torch.log2(torch.tensor([0.8, 0.3])))).tolist() == [1.0, 0.25]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0], [3.0, -3.0]]).reshape(2, 2, 1, 1))
    # standardized rows are +-0.7071 (unbiased std of two values), mean |W_hat| = 0.707 -> 2^round(-0.5) = 1
    assert conv.binary_weight().abs().flatten().tolist() == [1.0, 1.0, 1.0, 1.0]


def test_reactnet_adds_shortcut_before_rprelu_and_bbcu_after():
    x = -torch.ones(1, 4, 3, 3) * 3
    for name, before in (("reactnet", True), ("bbcu", False)):
        conv = BinaryConv2d(4, 4, 1, get_binarizer(name))
        with torch.no_grad():
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()
        out = conv(x, None)
        expected = 0.25 * x if before else x  # conv output is 0: PReLU(0 + x) vs PReLU(0) + x
        torch.testing.assert_close(out, expected)


def test_unknown_binarizer_names_the_field():
    with pytest.raises(ValueError, match=r"binarizer='ternary'.*bbcu"):
        get_binarizer("ternary")


def test_inference_skips_the_estimator_and_keeps_every_value():
    """Without autograd the clip STE returns scale * sign(W) directly: the same bits as with it."""
    from students.binary import channel_scale, scaled_sign_clip_ste

    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    w.data[0, 0, 0, 0] = 0.0
    with torch.no_grad():
        fast = scaled_sign_clip_ste(w, channel_scale(w))
    slow = scaled_sign_clip_ste(w, channel_scale(w))
    assert slow.requires_grad and not fast.requires_grad and torch.equal(fast, slow.detach())
