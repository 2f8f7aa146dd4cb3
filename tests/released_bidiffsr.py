"""The released BI-DiffSR network re-stated (module nesting, parameter names and forward pass, as the repository
zhengchen1999/BI-DiffSR defines them in diffglv/archs/unet_BI_DiffSR_arch.py): the reference the import tests compare
our network against, and the official step `benchmarks/device_check.py` times beside ours. Its sign is torch.sign
(zero gradient; the official training uses a straight-through sign, an element-wise op of the same cost)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Bias(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(1, c, 1, 1) * 0.1)


class RPReLU(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pr_bias0, self.pr_prelu, self.pr_bias1 = Bias(c), nn.PReLU(c), Bias(c)
        nn.init.uniform_(self.pr_prelu.weight, 0.1, 0.5)

    def forward(self, x):
        return self.pr_prelu(x + self.pr_bias0.bias) + self.pr_bias1.bias


class BIConv(nn.Module):
    def __init__(self, cin, cout, k, groups):
        super().__init__()
        self.TaR = nn.ModuleDict({f"dynamic_move_{i}": Bias(cin) for i in range(groups)})
        self.binary_conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.TaA = nn.ModuleDict({f"dynamic_relu_{i}": RPReLU(cout) for i in range(groups)})

    def forward(self, x, g):
        w = self.binary_conv.weight
        alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        out = F.conv2d(torch.sign(x + self.TaR[f"dynamic_move_{g}"].bias), alpha * torch.sign(w),
                       padding=w.shape[-1] // 2)
        return self.TaA[f"dynamic_relu_{g}"](out) + x


class Block(nn.Module):  # GroupNorm, Swish, (Dropout or Identity) then the conv
    def __init__(self, c, groups_norm, binary, groups):
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(groups_norm, c), nn.SiLU(), nn.Identity())
        self.conv = BIConv(c, c, 3, groups) if binary else nn.Conv2d(c, c, 3, padding=1)
        self.binary = binary

    def forward(self, x, g):
        h = self.block(x)
        return self.conv(h, g) if self.binary else self.conv(h)


class ResBlock(nn.Module):
    def __init__(self, c, temb, groups_norm, binary, groups):
        super().__init__()
        self.timestep_func = nn.Sequential(nn.SiLU(), nn.Linear(temb, c))
        self.block1, self.block2 = Block(c, groups_norm, binary, groups), Block(c, groups_norm, binary, groups)

    def forward(self, x, t, g):
        h = self.block1(x, g) + self.timestep_func(t)[:, :, None, None]
        return self.block2(h, g) + x


class Attention(nn.Module):
    def __init__(self, c, groups_norm):
        super().__init__()
        self.norm = nn.GroupNorm(groups_norm, c)
        self.qkv, self.out = nn.Conv2d(c, 3 * c, 1, bias=False), nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, 1, 3 * c, h, w).chunk(3, dim=2)
        attn = torch.einsum("bnchw,bncyx->bnhwyx", q, k) / math.sqrt(c)
        attn = torch.softmax(attn.reshape(b, 1, h, w, -1), -1).view(b, 1, h, w, h, w)
        return self.out(torch.einsum("bnhwyx,bncyx->bnchw", attn, v).reshape(b, c, h, w)) + x


class WithAttn(nn.Module):
    def __init__(self, c, temb, groups_norm, binary, groups, attn=False):
        super().__init__()
        self.res_block = ResBlock(c, temb, groups_norm, binary, groups)
        if attn:
            self.attn = Attention(c, groups_norm)

    def forward(self, x, t, g):
        x = self.res_block(x, t, g)
        return self.attn(x) if hasattr(self, "attn") else x


class Pair(nn.Module):  # CP-Down / CP-Up (biconv1/2) and CS-Fusion (biconv_1/_2)
    def __init__(self, kind, c, groups, binary=True):
        super().__init__()
        self.kind = kind
        make = (lambda k: BIConv(c, c, k, groups)) if binary else (lambda k: nn.Conv2d(c, c, k))
        k = 1 if kind == "fusion" else 3
        names = ("biconv_1", "biconv_2") if kind == "fusion" else ("biconv1", "biconv2")
        self.names, self.binary = names, binary
        for name in names:
            self.add_module(name, make(k))

    def run(self, name, x, g):
        m = getattr(self, name)
        return m(x, g) if self.binary else m(x)

    def forward(self, x, g):
        a, b = self.names
        c = x.shape[1]
        if self.kind == "down":
            return F.pixel_unshuffle(self.run(a, x[:, : c // 2], g) + self.run(b, x[:, c // 2 :], g), 2)
        if self.kind == "up":
            return F.pixel_shuffle(torch.cat([self.run(a, x, g), self.run(b, x, g)], 1), 2)
        x1, x2 = x[:, : c // 2], x[:, c // 2 :]
        return (self.run(a, torch.cat([x1[:, 1::2], x2[:, 0::2]], 1), g)
                + self.run(b, torch.cat([x1[:, 0::2], x2[:, 1::2]], 1), g))


class ReleasedUNet(nn.Module):
    def __init__(self, inner=16, norm_groups=4, mults=(1, 2), res_blocks=1, image_size=32, fp_res=(32,), T=2000, K=5):
        super().__init__()
        self.T, self.K, self.inner = T, K, inner
        self.timestep_level_mlp = nn.Sequential(nn.Identity(), nn.Linear(inner, 4 * inner), nn.SiLU(),
                                                nn.Linear(4 * inner, inner))
        downs, pre, feats, res = [nn.Conv2d(6, inner, 3, padding=1)], inner, [inner], image_size
        for i, m in enumerate(mults):
            for _ in range(res_blocks):
                downs.append(WithAttn(inner * m, inner, norm_groups, True, K))
                pre = inner * m
                feats.append(pre)
            if i < len(mults) - 1:
                downs.append(Pair("down", pre // 2, K))
                res, pre = res // 2, pre * 2
                feats.append(pre)
        self.downs = nn.ModuleList(downs)
        self.mid = nn.ModuleList([WithAttn(pre, inner, norm_groups, True, K, attn=True),
                                  WithAttn(pre, inner, norm_groups, True, K)])
        ups = []
        for i in reversed(range(len(mults))):
            fp = res in fp_res
            for _ in range(res_blocks + 1):
                feats.pop()
                ups += [Pair("fusion", inner * mults[i], K, binary=not fp),
                        WithAttn(inner * mults[i], inner, norm_groups, not fp, K)]
                pre = inner * mults[i]
            if i > 0:
                ups.append(Pair("up", pre, K))
                res, pre = res * 2, pre // 2
        self.ups = nn.ModuleList(ups)
        self.final_conv = nn.Module()
        self.final_conv.block = nn.Sequential(nn.GroupNorm(norm_groups, pre), nn.SiLU(), nn.Identity(),
                                              nn.Conv2d(pre, 3, 3, padding=1))

    def forward(self, x, c, time):
        g = max(0, min(int(time[0] * self.K / self.T), self.K - 1))
        half = self.inner // 2
        angles = time.float()[:, None] * torch.exp(-math.log(1e4) * torch.arange(half) / half)[None]
        t = self.timestep_level_mlp(torch.cat([angles.sin(), angles.cos()], -1))
        x = torch.cat([c, x], 1)
        feats = []
        for layer in self.downs:
            x = layer(x) if isinstance(layer, nn.Conv2d) else (layer(x, t, g) if isinstance(layer, WithAttn)
                                                               else layer(x, g))
            feats.append(x)
        for layer in self.mid:
            x = layer(x, t, g)
        for layer in self.ups:
            if isinstance(layer, Pair) and layer.kind == "fusion":
                x = layer(torch.cat([x, feats.pop()], 1), g)
            else:
                x = layer(x, t, g) if isinstance(layer, WithAttn) else layer(x, g)
        return self.final_conv.block(x)


def released(**kw) -> ReleasedUNet:
    torch.manual_seed(0)
    net = ReleasedUNet(**kw).eval()
    with torch.no_grad():  # GroupNorm affine and biases away from their trivial initial values
        for name, p in net.named_parameters():
            if name.endswith("bias") or ".block.0." in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return net
