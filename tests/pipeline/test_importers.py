"""Importing released BI-DiffSR checkpoints. The weights cannot be downloaded here, so the test re-states the
released network (module nesting, parameter names and forward pass, as the repository zhengchen1999/BI-DiffSR defines
them in diffglv/archs/unet_BI_DiffSR_arch.py) at small widths, writes its random weights in the released file
layouts, imports them and compares outputs; the paper-size layout is checked by its parameter count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline import evaluate as evaluate_cli
from pipeline.importers import CheckpointError, read_checkpoint
from pipeline.importers.bidiffsr import bidiffsr_config, convert_bidiffsr
from pipeline.importers.command import importers, main
from pipeline.resize import upsample_cond
from pipeline.sr_pipeline import BiDiffSRPipeline
from recipe_builder import write_recipe
from released_bidiffsr import Attention, ReleasedUNet, released
from students.bidiffsr import BiDiffSRUNet


OPTIONS = """
scale: 4
network_g:
  type: BiDiffSRUNet
  in_channel: 6
  out_channel: 3
  inner_channel: 16
  norm_groups: 4
  channel_mults: [1, 2, 4]
  attn_res: []
  res_blocks: 1
  dropout: 0.2
  image_size: 32
  fp_res: [32]
  total_step: 2000
  dynamic_group: 5
beta_schedule:
  n_timestep: 2000
  linear_start: !!float 1e-6
  linear_end: !!float 1e-2
  num_inference_steps: 50
"""


def test_paper_layout_has_the_released_parameter_count():
    with torch.device("meta"):
        ours = BiDiffSRUNet()
        theirs = ReleasedUNet(inner=64, norm_groups=16, mults=(1, 2, 4, 8), res_blocks=2, image_size=256,
                              fp_res=(256, 128))
    count = sum(p.numel() for p in theirs.parameters())
    assert count == sum(p.numel() for p in ours.parameters()) == 51_280_387


@pytest.mark.parametrize("wrapper", ["params_ema", "params", "bare", "module"])
def test_released_weights_import_and_compute_the_same(wrapper, tmp_path, capsys):
    net = released(mults=(1, 2, 4), fp_res=(32,))
    state = net.state_dict()
    payload = {"bare": state, "params_ema": {"params_ema": state, "params": {}}, "params": {"params": state},
               "module": {"state_dict": {f"module.{k}": v for k, v in state.items()}}}[wrapper]
    torch.save(payload, tmp_path / "net_g.pth")
    (tmp_path / "options.yml").write_text(OPTIONS)
    assert main(["bidiffsr", str(tmp_path / "net_g.pth"), "--config", str(tmp_path / "options.yml"),
                 "--out", str(tmp_path / "imported")]) == 0
    out = capsys.readouterr().out  # progress in logs: the import's start and its duration
    assert f"importing bidiffsr {tmp_path / 'net_g.pth'} ...\n" in out and ": done in " in out

    if wrapper == "params_ema":  # the evaluation command takes the imported folder as it is
        from PIL import Image

        (tmp_path / "val").mkdir()
        Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(tmp_path / "val" / "a.png")
        evaluate_cli.main(["--student", str(tmp_path / "imported"), "--val", str(tmp_path / "val"), "--scale", "4",
                           "--steps", "2", "--no-lpips"])
    pipe = BiDiffSRPipeline.from_pretrained(tmp_path / "imported")
    assert pipe.scheduler.config.clip_sample == "official" and pipe.config.scale == 4
    student = BiDiffSRUNet.from_pretrained(tmp_path / "imported" / "unet").eval()
    x, c = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    for t in (5, 900, 1999):  # one TaR/TaA group per call, as the released code picks it
        time = torch.full((2,), t)
        with torch.no_grad():
            torch.testing.assert_close(student(x, c, time), net(x, c, time), atol=2e-5, rtol=1e-4)


def test_settings_read_from_shapes_when_no_option_file(tmp_path, capsys):
    net = released(mults=(1, 2, 4), fp_res=(256,), norm_groups=16, image_size=256)  # the released norm_groups
    config, notes = bidiffsr_config(net.state_dict())
    assert (config["base_channels"], config["channel_mults"], config["num_res_blocks"]) == (16, (1, 2, 4), 1)
    assert config["fp_resolutions"] == (256,) and config["timestep_groups"] == 5 and "norm_groups = 16" in notes[0]
    model = convert_bidiffsr(net.state_dict(), config)
    x, c, t = torch.randn(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.tensor([700])
    with torch.no_grad():
        torch.testing.assert_close(model(x, c, t), net(x, c, t), atol=2e-5, rtol=1e-4)


def test_wrong_files_are_named_never_partly_loaded(tmp_path, capsys):
    net = released(mults=(1, 2, 4), fp_res=(32,))
    (tmp_path / "options.yml").write_text(OPTIONS)
    state = net.state_dict()
    cases = {
        "extra": (dict(state, **{"downs.1.res_block.extra": torch.zeros(1)}),
                  "unexpected key 'downs.1.res_block.extra'"),
        "missing": ({k: v for k, v in state.items() if k != "mid.0.attn.qkv.weight"},
                    "missing key 'mid.0.attn.qkv.weight'"),
        "shape": (dict(state, **{"downs.0.weight": torch.zeros(16, 6, 1, 1)}),
                  "'downs.0.weight' has shape (16, 6, 1, 1)"),
        "not tensors": ({"params": {"step": 3}}, "'step' is a int, not a tensor"),
    }
    for name, (payload, message) in cases.items():
        file = tmp_path / f"{name}.pth"
        torch.save(payload, file)
        assert main(["bidiffsr", str(file), "--config", str(tmp_path / "options.yml"),
                     "--out", str(tmp_path / f"out_{name}")]) == 2
        err = capsys.readouterr().err
        assert str(file) in err and message in err, err
        assert not (tmp_path / f"out_{name}").exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read .*junk.pth"):
        read_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "exists").mkdir()
    with pytest.raises(SystemExit):
        main(["bidiffsr", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "exists")])


# ---- SR3 (Janspiry/Image-Super-Resolution-via-Iterative-Refinement, model/sr3_modules/unet.py), re-stated ----------

class SR3Block(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(groups, cin), nn.SiLU(), nn.Identity(),
                                   nn.Conv2d(cin, cout, 3, padding=1))

    def forward(self, x):
        return self.block(x)


class SR3Res(nn.Module):
    def __init__(self, cin, cout, temb, groups):
        super().__init__()
        self.noise_func = nn.Module()
        self.noise_func.noise_func = nn.Sequential(nn.Linear(temb, cout))  # FeatureWiseAffine without affine
        self.block1, self.block2 = SR3Block(cin, cout, groups), SR3Block(cout, cout, groups)
        self.res_conv = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, t):
        h = self.block1(x) + self.noise_func.noise_func(t)[:, :, None, None]  # no SiLU before the projection
        return self.block2(h) + self.res_conv(x)


class SR3WithAttn(nn.Module):
    def __init__(self, cin, cout, temb, groups, attn):
        super().__init__()
        self.res_block = SR3Res(cin, cout, temb, groups)
        if attn:
            self.attn = Attention(cout, groups)

    def forward(self, x, t):
        x = self.res_block(x, t)
        return self.attn(x) if hasattr(self, "attn") else x


class SR3Resample(nn.Module):
    def __init__(self, c, down):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(c, c, 3, 2, 1) if down else nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if self.down else self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ReleasedSR3(nn.Module):
    def __init__(self, inner=16, groups=4, mults=(1, 2, 2), attn_res=(16,), res_blocks=1, image_size=32):
        super().__init__()
        self.inner = inner
        self.noise_level_mlp = nn.Sequential(nn.Identity(), nn.Linear(inner, 4 * inner), nn.SiLU(),
                                             nn.Linear(4 * inner, inner))
        downs, pre, feats, res = [nn.Conv2d(6, inner, 3, padding=1)], inner, [inner], image_size
        for i, m in enumerate(mults):
            for _ in range(res_blocks):
                downs.append(SR3WithAttn(pre, inner * m, inner, groups, res in attn_res))
                pre = inner * m
                feats.append(pre)
            if i < len(mults) - 1:
                downs.append(SR3Resample(pre, True))
                feats.append(pre)
                res //= 2
        self.downs = nn.ModuleList(downs)
        self.mid = nn.ModuleList([SR3WithAttn(pre, pre, inner, groups, True),
                                  SR3WithAttn(pre, pre, inner, groups, False)])
        ups = []
        for i in reversed(range(len(mults))):
            for _ in range(res_blocks + 1):
                ups.append(SR3WithAttn(pre + feats.pop(), inner * mults[i], inner, groups, res in attn_res))
                pre = inner * mults[i]
            if i > 0:
                ups.append(SR3Resample(pre, False))
                res *= 2
        self.ups = nn.ModuleList(ups)
        self.final_conv = SR3Block(pre, 3, groups)

    def forward(self, x, noise_level):
        half = self.inner // 2
        angles = noise_level[:, None] * torch.exp(-math.log(1e4) * torch.arange(half) / half)[None]
        t = self.noise_level_mlp(torch.cat([angles.sin(), angles.cos()], -1))
        feats = []
        for layer in self.downs:
            x = layer(x, t) if isinstance(layer, SR3WithAttn) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, t)
        for layer in self.ups:
            x = layer(torch.cat([x, feats.pop()], 1), t) if isinstance(layer, SR3WithAttn) else layer(x)
        return self.final_conv(x)


SR3_CONFIG = """{
    "datasets": {"val": {"l_resolution": 8, // low resolution
                         "r_resolution": 32}},
    "model": {
        "which_model_G": "sr3", // the sr3 network
        "unet": {"in_channel": 6, "out_channel": 3, "inner_channel": 16, "norm_groups": 4,
                 "channel_multiplier": [1, 2, 2], "attn_res": [16], "res_blocks": 1, "dropout": 0.2},
        "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 100, "linear_start": 1e-4, "linear_end": 0.05},
                          "val": {"schedule": "linear", "n_timestep": 100, "linear_start": 1e-4, "linear_end": 0.05}},
        "diffusion": {"image_size": 32, "channels": 3, "conditional": true}
    }
}
"""


def test_released_sr3_imports_as_a_teacher_with_the_original_network_and_process(tmp_path):
    from teachers import load_teacher

    torch.manual_seed(0)
    net = ReleasedSR3().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias") or ".block.0." in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    betas = torch.linspace(1e-4, 0.05, 100, dtype=torch.float64)
    state = {f"denoise_fn.{k}": v for k, v in net.state_dict().items()}
    state.update(betas=betas, alphas_cumprod=torch.cumprod(1 - betas, 0))  # the schedule buffers it saves too
    torch.save(state, tmp_path / "I1000_E1_gen.pth")
    (tmp_path / "sr3.json").write_text(SR3_CONFIG)
    assert main(["sr3", str(tmp_path / "I1000_E1_gen.pth"), "--config", str(tmp_path / "sr3.json"),
                 "--out", str(tmp_path / "teacher")]) == 0

    teacher = load_teacher(tmp_path / "teacher")
    process = teacher.process
    assert teacher.config.scale == 4 and process.config.sampler == "ddpm" and process.config.data_range == "signed"
    assert process.default_inference_steps == 100 and not process.default_deterministic
    x, cond = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    t = torch.tensor([3, 77])
    level = torch.cumprod(1 - betas.float(), 0)[t].sqrt()  # the original conditions on sqrt(alpha_bar_t)
    with torch.no_grad():
        expected = net(torch.cat([process.encode(cond), x], 1), level)
    torch.testing.assert_close(teacher.predict(x, process.encode(cond), t), expected, atol=2e-5, rtol=1e-4)

    # the original ancestral step: posterior mean of q(x_{t-1} | x_t, x0) from the clipped x0
    ab = torch.cumprod(1 - betas, 0)
    k = 40
    x0 = ((x.double() - (1 - ab[k]).sqrt() * expected[0:1].double().expand_as(x)) / ab[k].sqrt()).clamp(-1, 1)
    mean = (betas[k] * ab[k - 1].sqrt() / (1 - ab[k]) * x0
            + (1 - ab[k - 1]) * (1 - betas[k]).sqrt() / (1 - ab[k]) * x.double())
    ours = process.step(expected[0:1].expand_as(x), k, k - 1, x, None, deterministic=True)
    torch.testing.assert_close(ours.double(), mean, atol=1e-5, rtol=1e-4)
    sampled = teacher.sample(cond[:1], num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (1, 3, 32, 32)

    # the condition as SR3's data preparation makes it (PIL's bicubic of the 8-bit LR), through the user path
    assert process.config.condition_resize == "pil"
    lr8 = (torch.rand(1, 8, 8, 3) * 255).byte()
    official = torch.from_numpy(np.asarray(Image.fromarray(lr8[0].numpy()).resize((32, 32), Image.BICUBIC)).copy())
    official = official.permute(2, 0, 1)[None].float() / 255 * 2 - 1
    lr = lr8.permute(0, 3, 1, 2).float() / 255
    given = []
    teacher.unet.register_forward_hook(lambda module, inputs, output: given.append(inputs[1]))
    teacher.sample(upsample_cond(lr, 4), num_inference_steps=2, generator=torch.Generator().manual_seed(0), lr=lr)
    torch.testing.assert_close(given[0], official, atol=1e-6, rtol=0)


def test_sr3_import_needs_its_config_and_checks_the_schedule(tmp_path, capsys):
    net = ReleasedSR3()
    torch.save(net.state_dict(), tmp_path / "gen.pth")
    assert main(["sr3", str(tmp_path / "gen.pth"), "--out", str(tmp_path / "a")]) == 2
    assert "needs the release's JSON config" in capsys.readouterr().err
    (tmp_path / "sr3.json").write_text(SR3_CONFIG)
    torch.save(dict(net.state_dict(), betas=torch.linspace(1e-6, 1e-2, 100, dtype=torch.float64)), tmp_path / "b.pth")
    assert main(["sr3", str(tmp_path / "b.pth"), "--config", str(tmp_path / "sr3.json"),
                 "--out", str(tmp_path / "b")]) == 2
    assert "saved betas are not the config's linear schedule" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_student_distils_from_an_imported_sr3_teacher(tmp_path):
    from PIL import Image

    from pipeline.recipe import load_recipe
    from pipeline.trainer import Trainer

    torch.save(ReleasedSR3().state_dict(), tmp_path / "gen.pth")
    (tmp_path / "sr3.json").write_text(SR3_CONFIG)
    assert main(["sr3", str(tmp_path / "gen.pth"), "--config", str(tmp_path / "sr3.json"), "--out",
                 str(tmp_path / "teacher")]) == 0
    (tmp_path / "train").mkdir()
    for i in range(2):
        Image.fromarray((torch.rand(48, 48, 3) * 255).byte().numpy()).save(tmp_path / "train" / f"{i}.png")
    recipe = write_recipe(tmp_path, "run", teacher={"path": tmp_path / "teacher"}, eval={"enabled": False},
                          stages=[{"type": "feature_distill", "steps": 2, "batch_size": 2, "spd_weight": 0.0,
                                   "output_weight": 1.0}])
    trainer = Trainer(load_recipe(recipe))
    assert trainer.process.config.time_input == "index" and trainer.process.config.data_range == "signed"
    trainer.run()
    assert (tmp_path / "run" / "publish" / "model_index.json").is_file()


def test_a_student_recipe_cannot_feed_noise_levels_to_its_student(tmp_path):
    from pipeline.preflight import load_checked
    from pipeline.recipe import RecipeError

    recipe = write_recipe(tmp_path, process={"type": "ddpm", "time_input": "noise_level"})
    with pytest.raises(RecipeError, match="process.time_input: a BI-DiffSR student is given timesteps"):
        load_checked(recipe)


def test_every_importer_is_one_registered_file_and_the_old_command_path_still_works(tmp_path):
    assert sorted(importers()) == ["bidiffsr", "resshift", "sr3"]
    import pipeline.import_official as old

    assert old.main is main and old.read_checkpoint is read_checkpoint  # `python -m pipeline.import_official`
    with pytest.raises(SystemExit):  # an option of another kind is a usage error naming it
        main(["sr3", "x.pth", "--one-step", "--out", str(tmp_path / "out")])
