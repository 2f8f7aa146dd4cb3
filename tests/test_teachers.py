"""SR3 and ResShift teachers: schedules (diffusion-sr3.md, resshift.md), training, save/load, sampling, feature taps."""

import json

import pytest
import torch
import torch.nn.functional as F

from students.bidiffsr import BIDiffSRUNet
from students.complexity import format_ops, format_params, measure
from teachers import ResShiftScheduler, ResShiftTeacher, SR3Teacher, SR3UNet, load_teacher, sr3_scheduler

TINY_UNET = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4, dropout=0.0)


def patches(n=4, size=8):
    hr = torch.rand(n, 3, size, size)
    cond = F.interpolate(F.avg_pool2d(hr, 4), scale_factor=4, mode="bicubic")
    return hr, cond


# ---- SR3 -------------------------------------------------------------------------------------------------------

def test_sr3_schedule_numbers():
    s = sr3_scheduler()
    assert s.betas[0].item() == pytest.approx(1e-6) and s.betas[-1].item() == pytest.approx(1e-2)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.386e-5, rel=1e-3)
    assert s.alphas_cumprod[0].item() == pytest.approx(0.999999)


def test_sr3_ddim_steps_are_leading_spacing_of_40():
    teacher = SR3Teacher.build(**TINY_UNET)
    ts = teacher.ddim_scheduler(50).timesteps.tolist()
    assert len(ts) == 50 and ts[0] == 1960 and ts[-1] == 0 and {a - b for a, b in zip(ts, ts[1:])} == {40}


def test_sr3_paper_config_params_and_ops():
    with torch.device("meta"):
        unet = SR3UNet().eval()
    c = measure(unet)
    assert c.raw_params == 55_407_235 and c.binary_params == 0
    assert c.ops == 176_408_113_152
    assert (format_params(c.params), format_ops(c.ops)) == ("55.41M", "176.41G")
    assert c.ops_by_kind["upsample_ops"] == 14_680_064 and c.ops_by_kind["groupnorm_ops"] == 5 * 112_721_920


# ---- ResShift --------------------------------------------------------------------------------------------------

def test_resshift_eta_schedule():
    s = ResShiftScheduler()
    assert s.sqrt_etas[0].item() == pytest.approx(0.02, abs=1e-5)
    assert s.sqrt_etas[7].item() == pytest.approx(0.475858, abs=1e-5)
    assert s.sqrt_etas[-1].item() == pytest.approx(0.99, abs=1e-5)
    assert s.etas[-1].item() == pytest.approx(0.9801)
    assert torch.all(s.etas[1:] > s.etas[:-1])
    journal = ResShiftScheduler(num_train_timesteps=4, min_noise_level=0.2)
    assert journal.sqrt_etas.tolist() == pytest.approx([0.1, 0.520096, 0.761382, 0.99], abs=1e-5)


def test_resshift_forward_posterior_and_scaling():
    s = ResShiftScheduler()
    x0, y, noise = torch.rand(3, 3, 4, 4), torch.rand(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 7, 14])
    x_t = s.add_noise(x0, noise, t, y)
    for b in range(3):
        eta = s.etas[t[b]].item()
        torch.testing.assert_close(x_t[b], x0[b] + eta * (y[b] - x0[b]) + 2.0 * eta**0.5 * noise[b])
        torch.testing.assert_close(s.scale_model_input(x_t, t)[b], x_t[b] / (4 * eta + 1) ** 0.5)
    i = 5
    eta, eta_prev = s.etas[i].item(), s.etas[i - 1].item()
    assert s.posterior_mean_coef_xt[i].item() == pytest.approx(eta_prev / eta)
    assert s.posterior_mean_coef_x0[i].item() == pytest.approx((eta - eta_prev) / eta)
    assert s.posterior_variance[i].item() == pytest.approx(4 * eta_prev * (eta - eta_prev) / eta)
    assert s.posterior_variance[0].item() == 0.0
    # deterministic step: k + m + j = 1, and at index 0 it returns x0_hat
    torch.testing.assert_close(s.ddim_k + s.ddim_m + s.ddim_j, torch.ones(15, dtype=torch.float64))
    x0_hat = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(s.deterministic_step(x0_hat, 0, torch.randn(1, 3, 4, 4), y[:1]), x0_hat)


def test_resshift_deterministic_step_matches_implied_noise_form():
    s = ResShiftScheduler()
    x0_hat, y, x_t = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    i = 9
    eta, eta_prev = s.etas[i].item(), s.etas[i - 1].item()
    eps_hat = (x_t - x0_hat - eta * (y - x0_hat)) / (2.0 * eta**0.5)
    expected = x0_hat + eta_prev * (y - x0_hat) + 2.0 * eta_prev**0.5 * eps_hat
    torch.testing.assert_close(s.deterministic_step(x0_hat, i, x_t, y), expected)


def test_resshift_rejects_partial_chains_and_bad_config():
    with pytest.raises(ValueError, match="num_inference_steps=5"):
        ResShiftScheduler().set_timesteps(5)
    with pytest.raises(ValueError, match="kappa=-1"):
        ResShiftScheduler(kappa=-1)


# ---- both teachers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, factor", [(SR3Teacher, 2.0), (ResShiftTeacher, 5.0)])
def test_tiny_teacher_overfits_a_few_patches(cls, factor):
    """The teacher's own loss on four fixed 8x8 patches falls at least `factor`-fold in 80 Adam steps."""
    hr, cond = patches()
    teacher = cls.build(**TINY_UNET)
    opt = torch.optim.Adam(teacher.unet.parameters(), lr=3e-3)

    def held_out_loss():  # same timesteps and noise every time
        with torch.no_grad():
            return teacher.training_loss(hr.repeat(8, 1, 1, 1), cond.repeat(8, 1, 1, 1),
                                         generator=torch.Generator().manual_seed(1)).item()

    before = held_out_loss()
    gen = torch.Generator().manual_seed(2)
    for _ in range(80):
        loss = teacher.training_loss(hr, cond, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after * factor < before, f"{cls.__name__}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("cls", [SR3Teacher, ResShiftTeacher])
def test_save_load_reproduces_outputs_exactly(cls, tmp_path):
    teacher = cls.build(scale=2, **TINY_UNET).freeze()
    teacher.save_pretrained(tmp_path)
    loaded = load_teacher(tmp_path)
    assert type(loaded) is cls and loaded.config.scale == 2
    assert not any(p.requires_grad for p in loaded.unet.parameters())
    hr, cond = patches(2, 12)
    t = torch.tensor([1, 10])
    assert torch.equal(teacher.predict(hr, cond, t), loaded.predict(hr, cond, t))
    a = teacher.sample(cond, generator=torch.Generator().manual_seed(3), **({"num_inference_steps": 4} if cls is SR3Teacher else {}))
    b = loaded.sample(cond, generator=torch.Generator().manual_seed(3), **({"num_inference_steps": 4} if cls is SR3Teacher else {}))
    assert torch.equal(a, b) and a.shape == cond.shape and 0 <= a.min() and a.max() <= 1


def test_deterministic_resshift_sampler_is_deterministic():
    teacher = ResShiftTeacher.build(**TINY_UNET).freeze()
    _, cond = patches(2, 8)
    noise = torch.randn_like(cond)
    a = teacher.sample(cond, noise=noise, deterministic=True, generator=torch.Generator().manual_seed(0))
    b = teacher.sample(cond, noise=noise, deterministic=True, generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)
    c = teacher.sample(cond, noise=noise, deterministic=False, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a, c)


def test_sr3_ddim_from_fixed_noise_is_deterministic():
    teacher = SR3Teacher.build(**TINY_UNET).freeze()
    _, cond = patches(2, 8)
    noise = torch.randn_like(cond)
    assert torch.equal(teacher.sample(cond, 5, noise=noise), teacher.sample(cond, 5, noise=noise))
    with pytest.raises(ValueError, match="noise has shape"):
        teacher.sample(cond, 5, noise=noise[:, :, :4])


def test_teacher_features_match_student_taps():
    teacher = SR3Teacher.build(**TINY_UNET).freeze()
    student = BIDiffSRUNet(**TINY_UNET, image_size=32, fp_resolutions=(32,)).eval()
    x, cond = patches(2, 16)
    t = torch.tensor([5, 1200])
    out, t_feats = teacher.features(x, cond, t)
    _, s_feats = student(x, cond, t, return_features=True)
    assert {k: v.shape for k, v in t_feats.items()} == {k: v.shape for k, v in s_feats.items()}
    torch.testing.assert_close(out, teacher.predict(x, cond, t))  # the tap does not change the output


def test_per_sample_timesteps_in_the_teacher():
    teacher = SR3Teacher.build(**TINY_UNET).freeze()
    x, cond = patches(3, 8)
    t = torch.tensor([3, 900, 1999])
    batched = teacher.predict(x, cond, t)
    single = torch.cat([teacher.predict(x[i : i + 1], cond[i : i + 1], t[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_not_a_teacher_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_teacher(tmp_path / "missing")
    with pytest.raises(ValueError, match="is not a teacher folder: it has no model_index.json"):
        load_teacher(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="'StableDiffusionPipeline', which is not a teacher"):
        load_teacher(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid teacher index"):
        load_teacher(tmp_path)


def test_scale_mismatch_is_an_error():
    teacher = SR3Teacher.build(scale=4, **TINY_UNET)
    teacher.check_scale(4)
    with pytest.raises(ValueError, match="trained for x4 super-resolution but the data is x2"):
        teacher.check_scale(2)


def test_evaluation_rows_with_a_resshift_teacher():
    """The student keeps its DDPM process even when the teacher row comes from ResShift."""
    from pipeline.data import ValImage
    from pipeline.evaluate import evaluate

    hr, _ = patches(1, 24)
    images = [ValImage("x", hr[0], F.avg_pool2d(hr, 4)[0])]
    student = BIDiffSRUNet(**TINY_UNET, image_size=32, fp_resolutions=(32,))
    result = evaluate(images, 4, student, ResShiftTeacher.build(**TINY_UNET).freeze(), num_inference_steps=3)
    assert set(result["mean"]) == {"bicubic", "teacher", "student"}
