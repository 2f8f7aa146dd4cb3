"""ResShift on VQ latents and the `resshift` import: the process samples as the released sampler describes (encode
without quantisation, the LR at the latent size for the denoiser, scaled input, no clip, ancestral posterior steps,
quantised decode), an imported ResShift or SinSR checkpoint loads with one line and samples, and a BI-DiffSR student
distils from it through the trainer and publishes a folder that carries the autoencoder. Checkpoints are written by
the tests in the released layouts at small widths (random weights)."""

import pytest
import torch
import yaml
from PIL import Image

from pipeline.importers.command import main
from pipeline.importers.resshift import vq_model
from pipeline.resize import upsample_cond
from recipe_builder import write_recipe
from teachers import LatentResShiftProcess, load_teacher
from teachers.latent_resshift import bicubic_preimage
from teachers.process import sample
from teachers.swin_unet import SwinUNet
from test_importers_resshift import ldm_vq_state

VQ = dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=3, embed_dim=3, n_embed=16, resolution=32)
UNET = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(8, 4),
            swin_embed_dim=32, num_head_channels=16, window_size=4, lq_size=8)
OPTIONS = {  # the release's option-file layout (configs/realsr_swinunet_realesrgan256.yaml) at test widths
    "model": {"target": "models.unet.UNetModelSwin",
              "params": dict(UNET, channel_mult=[1, 2], num_res_blocks=[1, 1], attention_resolutions=[8, 4], dims=2,
                             out_channels="${autoencoder.params.embed_dim}", use_fp16=False, resblock_updown=False)},
    "diffusion": {"params": dict(sf=4, schedule_name="exponential", schedule_kwargs={"power": 0.3}, etas_end=0.99,
                                 steps=6, min_noise_level=0.04, kappa=2.0, weighted_mse=False, predict_type="xstart",
                                 timestep_respacing=None, scale_factor=1.0, normalize_input=True, latent_flag=True)},
    "autoencoder": {"params": {"embed_dim": 3, "n_embed": 16,
                               "ddconfig": dict(double_z=False, z_channels=3, resolution=32, in_channels=3, out_ch=3,
                                                ch=32, ch_mult=[1, 1, 2], num_res_blocks=1, attn_resolutions=[],
                                                dropout=0.0)}},
}


def random_swin_unet(seed: int = 0) -> SwinUNet:
    """A small UNetModelSwin with every weight random (the released init zeroes the output convs)."""
    torch.manual_seed(seed)
    net = SwinUNet(**UNET)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net.eval()


def write_release(folder, options: dict | None = None, wrap: str = ""):
    """Released-layout files: the denoiser (optionally wrapped, with `module.` prefixes), the autoencoder and the
    option file."""
    net = random_swin_unet()
    state = net.state_dict()
    if wrap:
        state = {wrap: {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, folder / "resshift.pth")
    torch.save(ldm_vq_state(**VQ), folder / "vq_f4.pth")
    (folder / "options.yaml").write_text(yaml.safe_dump(options or OPTIONS))
    return net


def import_args(folder, out="teacher", *extra):
    return ["resshift", str(folder / "resshift.pth"), "--autoencoder", str(folder / "vq_f4.pth"), "--config",
            str(folder / "options.yaml"), "--out", str(folder / out), *extra]


def test_the_lr_is_recovered_from_its_bicubic_upsampling():
    lr = torch.rand(2, 3, 12, 10)
    torch.testing.assert_close(bicubic_preimage(upsample_cond(lr, 4), 4), lr, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not a multiple of the latent factor 4"):
        bicubic_preimage(torch.rand(1, 3, 10, 12), 4)


def test_latent_sampling_follows_the_released_sampler(tmp_path):
    """Our generic sampler on the latent process against the released sampler written out step by step."""
    torch.manual_seed(1)
    vae = vq_model(**VQ).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    net = random_swin_unet()
    process = LatentResShiftProcess(num_train_timesteps=6).use_autoencoder(vae)
    lr = torch.rand(2, 3, 8, 8)
    cond = upsample_cond(lr, 4)
    noise = torch.randn(2, 3, 8, 8)
    ours = process.decode(sample(net, process, cond, size_multiple=net.size_multiple, noise=noise,
                                 deterministic=False, generator=torch.Generator().manual_seed(5), decode=False))

    with torch.no_grad():  # the released loop: z_y = E(2 cond - 1) unquantised, x_T = z_y + kappa sqrt(eta_T) eps
        z_y = vae.encode(cond * 2 - 1).latents
        etas, kappa = process.etas.float(), 2.0
        x = z_y + kappa * etas[-1].sqrt() * noise
        g = torch.Generator().manual_seed(5)
        for i in reversed(range(6)):
            x0 = net(x / (kappa**2 * etas[i] + 1).sqrt(), lr * 2 - 1, torch.full((2,), i))  # no clip in latent
            prev = etas[i - 1] if i else torch.tensor(0.0)
            alpha = etas[i] - prev
            mean = prev / etas[i] * x + alpha / etas[i] * x0
            x = mean + (kappa**2 * prev / etas[i] * alpha).sqrt() * torch.randn(x.shape, generator=g)
        released = ((vae.decode(x).sample + 1) / 2).clamp(0, 1)  # decode quantises, as the released decode
    torch.testing.assert_close(ours, released, atol=2e-4, rtol=1e-3)
    assert ours.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("wrap", ["", "state_dict"])
def test_a_released_resshift_imports_loads_with_one_line_and_samples(tmp_path, wrap, capsys):
    net = write_release(tmp_path, wrap=wrap)
    assert main(import_args(tmp_path)) == 0
    assert "teachers.load_teacher" in capsys.readouterr().out
    teacher = load_teacher(tmp_path / "teacher")
    process = teacher.process
    assert isinstance(process, LatentResShiftProcess) and process.num_train_timesteps == 6
    assert process.config.clip_sample == "none" and process.spatial_factor == 4 and teacher.config.scale == 4
    assert (tmp_path / "teacher" / "scheduler" / "autoencoder" / "config.json").is_file()
    x, lr, t = torch.randn(2, 3, 8, 8), torch.rand(2, 3, 8, 8) * 2 - 1, torch.tensor([0, 5])
    with torch.no_grad():
        torch.testing.assert_close(teacher.predict(x, lr, t), net(x, lr, t))  # strict, complete weights
    cond = upsample_cond(torch.rand(1, 3, 10, 9), 4)  # padded to the 32-pixel multiple and cropped back
    first = teacher.sample(cond, generator=torch.Generator().manual_seed(0))
    again = load_teacher(tmp_path / "teacher").sample(cond, generator=torch.Generator().manual_seed(0))
    assert first.shape == (1, 3, 40, 36) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again)


def test_a_sinsr_checkpoint_imports_as_a_one_step_teacher(tmp_path):
    net = write_release(tmp_path)
    assert main(import_args(tmp_path, "sinsr", "--one-step")) == 0
    teacher = load_teacher(tmp_path / "sinsr")
    assert teacher.process.config.one_step
    calls = []
    teacher.unet.register_forward_hook(lambda m, i, o: calls.append(i[2]))
    cond = upsample_cond(torch.rand(1, 3, 8, 8), 4)
    noise = torch.randn(1, 3, 8, 8)
    out = teacher.sample(cond, noise=noise, decode=False)
    assert [int(t) for t in calls] == [5]  # one evaluation, at the top step
    y = teacher.process.encode_condition(cond)
    x_T = y[:, :3] + 2.0 * teacher.process.sqrt_etas[-1].float() * noise
    with torch.no_grad():
        expected = net(teacher.process.model_input(x_T, 5), y[:, 3:], torch.tensor([5]))
    torch.testing.assert_close(out, expected)


def test_sinsr_option_files_and_compiled_checkpoints_import(tmp_path):
    """SinSR's configs/SinSR.yaml counts the LR's channels in in_channels and has no lq_size; torch.compile saves
    keys under `_orig_mod.` (stripped, as the official loader strips them)."""
    net = write_release(tmp_path)
    sinsr = yaml.safe_load(yaml.safe_dump(OPTIONS))
    del sinsr["model"]["params"]["lq_size"]
    sinsr["model"]["params"]["in_channels"] = 6
    (tmp_path / "options.yaml").write_text(yaml.safe_dump(sinsr))
    torch.save({f"_orig_mod.{k}": v for k, v in net.state_dict().items()}, tmp_path / "resshift.pth")
    assert main(import_args(tmp_path, "sinsr", "--one-step")) == 0
    teacher = load_teacher(tmp_path / "sinsr")
    x, lr, t = torch.randn(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.tensor([5])
    with torch.no_grad():
        torch.testing.assert_close(teacher.predict(x, lr, t), net(x, lr, t))


def test_a_checkpoint_holding_nan_is_refused_by_tensor_name(tmp_path, capsys):
    net = write_release(tmp_path)
    state = net.state_dict()
    state["out.2.bias"] = state["out.2.bias"].clone().fill_(float("nan"))
    torch.save(state, tmp_path / "resshift.pth")
    assert main(import_args(tmp_path)) == 2
    assert "'out.2.bias' holds NaN or infinite values" in capsys.readouterr().err
    assert not (tmp_path / "teacher").exists()


def test_resshift_import_errors_name_the_file_and_key_and_write_nothing(tmp_path, capsys):
    write_release(tmp_path)
    assert main(["resshift", str(tmp_path / "resshift.pth"), "--out", str(tmp_path / "a")]) == 2
    assert "needs the autoencoder" in capsys.readouterr().err
    assert main(["resshift", str(tmp_path / "vq_f4.pth"), "--autoencoder", str(tmp_path / "resshift.pth"),
                 "--config", str(tmp_path / "options.yaml"), "--out", str(tmp_path / "b")]) == 2
    assert "vq_f4.pth is not a ResShift UNetModelSwin checkpoint" in capsys.readouterr().err
    bad = yaml.safe_load(yaml.safe_dump(OPTIONS))
    bad["diffusion"]["params"]["predict_type"] = "epsilon"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["resshift", str(tmp_path / "resshift.pth"), "--autoencoder", str(tmp_path / "vq_f4.pth"), "--config",
                 str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "c")]) == 2
    assert "bad.yaml: diffusion.params.predict_type" in capsys.readouterr().err
    wide = yaml.safe_load(yaml.safe_dump(OPTIONS))
    wide["model"]["params"]["model_channels"] = 64
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(wide))
    assert main(["resshift", str(tmp_path / "resshift.pth"), "--autoencoder", str(tmp_path / "vq_f4.pth"), "--config",
                 str(tmp_path / "wide.yaml"), "--out", str(tmp_path / "d")]) == 2
    assert "resshift.pth: 'time_embed.0.weight' has shape" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sr3", str(tmp_path / "resshift.pth"), "--one-step", "--out", str(tmp_path / "e")])
    assert not any((tmp_path / n).exists() for n in "abcde")
    assert not list(tmp_path.glob(".*.partial"))


def test_a_latent_process_without_its_autoencoder_is_a_clear_error(tmp_path):
    process = LatentResShiftProcess()
    with pytest.raises(ValueError, match="no autoencoder attached"):
        process.encode(torch.rand(1, 3, 32, 32))
    process.save_config(tmp_path)  # what a training checkpoint keeps
    with pytest.raises(FileNotFoundError, match="without its autoencoder"):
        LatentResShiftProcess.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="clip_sample='data'"):
        LatentResShiftProcess(clip_sample="data")


def test_a_student_distils_from_an_imported_resshift_teacher_and_publishes_with_its_autoencoder(tmp_path):
    from pipeline.preflight import RecipeWarning, preflight
    from pipeline.recipe import load_recipe
    from pipeline.sr_pipeline import BiDiffSRPipeline, tiled_super_resolve
    from pipeline.trainer import Trainer

    write_release(tmp_path)
    assert main(import_args(tmp_path)) == 0
    for split, size in (("train", 48), ("val", 112)):
        (tmp_path / split).mkdir()
        for i in range(2):
            Image.fromarray((torch.rand(size, size, 3) * 255).byte().numpy()).save(tmp_path / split / f"{i}.png")
    recipe = write_recipe(tmp_path, "run", data={"train": tmp_path / "train", "val": tmp_path / "val",
                                                 "val_max_images": 1},
                          teacher={"path": tmp_path / "teacher"}, eval={"lpips": False, "tile_size": 96},
                          stages=[{"type": "feature_distill", "steps": 2, "batch_size": 2, "spd_weight": 0.0,
                                   "output_weight": 1.0},
                                  {"type": "one_step", "steps": 2, "batch_size": 2}])
    with pytest.warns(RecipeWarning, match="data.degradation = 'bicubic', but the teacher .* trained on 'realesrgan'"):
        checked = preflight(load_recipe(recipe))  # deliberate here: a warning, not an error
    trainer = Trainer(checked.recipe, checked=checked)
    assert isinstance(trainer.process, LatentResShiftProcess) and trainer.process.autoencoder is not None
    result = trainer.run()
    assert set(result["mean"]) == {"bicubic", "condition", "teacher", "student"}  # 112x112 images in 96-pixel tiles
    publish = tmp_path / "run" / "publish"
    assert (publish / "scheduler" / "autoencoder" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = BiDiffSRPipeline.from_pretrained(publish)
    assert pipe.scheduler.config.one_step and pipe.scheduler.spatial_factor == 4
    sr = pipe(torch.rand(1, 3, 12, 12), seed=0, tile_size=32, tile_overlap=8, output_type="pt").images[0]
    assert sr.shape == (3, 48, 48) and torch.isfinite(sr).all()
    whole = tiled_super_resolve(pipe.unet, pipe.scheduler, upsample_cond(torch.rand(1, 3, 8, 8), 4), None,
                                generator=torch.Generator().manual_seed(0), tile=32)
    assert whole.shape == (1, 3, 32, 32)
