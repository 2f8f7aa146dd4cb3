"""The diffusion processes (diffusion-sr3.md, resshift.md, one-step.md) and the one sampling loop."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from teachers import DDPMProcess, ResShiftProcess, build_process, load_process, noisy_batch, sample


def test_ddpm_schedule_numbers_and_add_noise_match_diffusers():
    p = DDPMProcess()
    reference = DDPMScheduler(num_train_timesteps=2000, beta_start=1e-6, beta_end=1e-2, beta_schedule="linear")
    assert torch.equal(p.alphas_cumprod, reference.alphas_cumprod)
    assert p.alphas_cumprod[-1].item() == pytest.approx(4.386e-5, rel=1e-3)
    assert p.alphas_cumprod[0].item() == pytest.approx(0.999999)
    x0, noise, t = torch.rand(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.tensor([0, 999, 1999])
    assert torch.equal(p.add_noise(x0, noise, t), reference.add_noise(x0, noise, t))


def test_ddim_steps_are_leading_spacing_of_40():
    ts = DDPMProcess().inference_timesteps(50)
    assert len(ts) == 50 and ts[0] == 1960 and ts[-1] == 0 and {a - b for a, b in zip(ts, ts[1:])} == {40}
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        DDPMProcess().inference_timesteps(0)


def _toy_denoiser(x, y, t):
    """A fixed, smooth, timestep-dependent 'noise prediction' that drives x0 estimates out of [0, 1]."""
    return torch.sin(3 * x + y) * 2 + t.float() / 1000


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_official_clip_reproduces_diffusers_ddim_bit_for_bit(steps):
    process = DDPMProcess(clip_sample="official")
    reference = DDIMScheduler(num_train_timesteps=2000, beta_start=1e-6, beta_end=1e-2, beta_schedule="linear",
                              clip_sample=True, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    reference.set_timesteps(steps)
    cond, noise = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    x = noise
    for t in reference.timesteps:
        x = reference.step(_toy_denoiser(x, cond, t), t, x, eta=0.0).prev_sample
    ours = sample(_toy_denoiser, process, cond, steps, noise=noise, decode=False)
    assert torch.equal(ours, x)


def test_sampling_clips_x0_to_the_data_range_by_default():
    """Fact: images live in [0, 1]; the default clip binds there, the official [-1, 1] clip does not."""
    cond, noise = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    data = sample(_toy_denoiser, DDPMProcess(), cond, 5, noise=noise, decode=False)
    official = sample(_toy_denoiser, DDPMProcess(clip_sample="official"), cond, 5, noise=noise, decode=False)
    assert data.min() >= 0 and data.max() <= 1
    assert official.min() < 0  # the loose clip lets the estimate leave the data
    x_t, out = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4) * 5
    x0 = DDPMProcess().predict_x0(out, x_t, 100, x_t)
    assert x0.min() >= 0 and x0.max() <= 1
    assert DDPMProcess().predict_x0(out, x_t, 100, x_t, clip=False).max() > 1


def test_ddpm_stochastic_sampler_uses_the_generator():
    cond, noise = torch.rand(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    a = sample(_toy_denoiser, DDPMProcess(), cond, 4, noise=noise, deterministic=False,
               generator=torch.Generator().manual_seed(0))
    b = sample(_toy_denoiser, DDPMProcess(), cond, 4, noise=noise, deterministic=False,
               generator=torch.Generator().manual_seed(1))
    c = sample(_toy_denoiser, DDPMProcess(), cond, 4, noise=noise, deterministic=True)
    assert not torch.equal(a, b) and not torch.equal(a, c)


def test_resshift_eta_schedule():
    s = ResShiftProcess()
    assert s.sqrt_etas[0].item() == pytest.approx(0.02, abs=1e-5)
    assert s.sqrt_etas[7].item() == pytest.approx(0.475858, abs=1e-5)
    assert s.sqrt_etas[-1].item() == pytest.approx(0.99, abs=1e-5)
    assert s.etas[-1].item() == pytest.approx(0.9801)
    assert torch.all(s.etas[1:] > s.etas[:-1])
    journal = ResShiftProcess(num_train_timesteps=4, min_noise_level=0.2)
    assert journal.sqrt_etas.tolist() == pytest.approx([0.1, 0.520096, 0.761382, 0.99], abs=1e-5)


def test_resshift_forward_posterior_and_scaling():
    s = ResShiftProcess()
    x0, y, noise = torch.rand(3, 3, 4, 4), torch.rand(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 7, 14])
    x_t = s.add_noise(x0, noise, t, y)
    for b in range(3):
        eta = s.etas[t[b]].item()
        torch.testing.assert_close(x_t[b], x0[b] + eta * (y[b] - x0[b]) + 2.0 * eta**0.5 * noise[b])
        torch.testing.assert_close(s.model_input(x_t, t)[b], x_t[b] / (4 * eta + 1) ** 0.5)
    i = 5
    eta, eta_prev = s.etas[i].item(), s.etas[i - 1].item()
    assert s.posterior_mean_coef_xt[i].item() == pytest.approx(eta_prev / eta)
    assert s.posterior_mean_coef_x0[i].item() == pytest.approx((eta - eta_prev) / eta)
    assert s.posterior_variance[i].item() == pytest.approx(4 * eta_prev * (eta - eta_prev) / eta)
    assert s.posterior_variance[0].item() == 0.0
    # deterministic step: k + m + j = 1, and at index 0 it returns x0_hat
    torch.testing.assert_close(s.ddim_k + s.ddim_m + s.ddim_j, torch.ones(15, dtype=torch.float64))
    x0_hat = torch.rand(1, 3, 4, 4) * 2 - 1
    torch.testing.assert_close(s.step(x0_hat, 0, -1, torch.randn(1, 3, 4, 4), y[:1]), x0_hat)


def test_resshift_deterministic_step_matches_implied_noise_form():
    s = ResShiftProcess()
    x0_hat, y, x_t = torch.rand(2, 3, 4, 4) * 2 - 1, torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    i = 9
    eta, eta_prev = s.etas[i].item(), s.etas[i - 1].item()
    eps_hat = (x_t - x0_hat - eta * (y - x0_hat)) / (2.0 * eta**0.5)
    expected = x0_hat + eta_prev * (y - x0_hat) + 2.0 * eta_prev**0.5 * eps_hat
    torch.testing.assert_close(s.step(x0_hat, i, i - 1, x_t, y, deterministic=True), expected)


def test_resshift_residual_prediction_reads_the_output_as_x0_minus_y():
    s = ResShiftProcess(prediction_type="residual")
    x0, y = torch.rand(2, 3, 4, 4) * 2 - 1, torch.rand(2, 3, 4, 4) * 2 - 1
    torch.testing.assert_close(s.target(x0, torch.randn_like(x0), y), x0 - y)
    torch.testing.assert_close(s.predict_x0(x0 - y, y, 3, y, clip=False), x0)


def test_resshift_rejects_partial_chains_and_bad_config():
    with pytest.raises(ValueError, match="num_inference_steps=5"):
        ResShiftProcess().inference_timesteps(5)
    with pytest.raises(ValueError, match="kappa=-1"):
        ResShiftProcess(kappa=-1)
    with pytest.raises(ValueError, match="prediction_type='epsilon'"):
        ResShiftProcess(prediction_type="epsilon")
    with pytest.raises(ValueError, match="process 'ddim' is not known"):
        build_process("ddim")


@pytest.mark.parametrize("process", [DDPMProcess(), ResShiftProcess(prediction_type="residual")])
def test_noisy_batch_draws_one_timestep_per_sample(process):
    hr, cond = torch.rand(64, 3, 4, 4), torch.rand(64, 3, 4, 4)
    b = noisy_batch(process, hr, cond, torch.Generator().manual_seed(0))
    assert b.t.shape == (64,) and b.t.unique().numel() > 5 and b.x_in.shape == hr.shape
    again = noisy_batch(process, hr, cond, torch.Generator().manual_seed(0))
    assert torch.equal(b.x_in, again.x_in) and torch.equal(b.target, again.target)


@pytest.mark.parametrize("process", [DDPMProcess(), ResShiftProcess()])
def test_one_step_variant_evaluates_once_at_the_top_timestep(process):
    seen = []

    def model(x, y, t):
        seen.append(int(t))
        return torch.zeros_like(x)

    one = process.one_step_variant()
    assert one.config.one_step and not process.config.one_step
    cond = torch.rand(1, 3, 8, 8)
    out = sample(model, one, cond, noise=torch.randn(1, 3, 8, 8))
    assert seen == [process.num_train_timesteps - 1] and out.shape == cond.shape


@pytest.mark.parametrize("process", [DDPMProcess(clip_sample="official", num_inference_steps=20),
                                     ResShiftProcess(prediction_type="residual", num_train_timesteps=4)])
def test_process_saves_and_loads_by_class_name(process, tmp_path):
    process.save_config(tmp_path)
    loaded = load_process(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert type(loaded) is type(process) and public(loaded.config) == public(process.config)
    with pytest.raises(FileNotFoundError, match="holds no diffusion process"):
        load_process(tmp_path / "missing")
