"""Teachers: one `Teacher` class for every denoiser kind (SR3, the student's full-precision twin) on every process;
training, save/load, sampling, feature taps and alignment with the student."""

import json

import pytest
import torch
import torch.nn.functional as F

from students.bidiffsr import BiDiffSRUNet
from students.complexity import format_ops, format_params, measure
from teachers import (DDPMProcess, ResShiftProcess, SR3UNet, Teacher, build_teacher_denoiser, load_teacher)

TINY_UNET = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4, dropout=0.0)
TINY_STUDENT = dict(TINY_UNET, image_size=32, fp_resolutions=(32,))


def sr3(process=None, scale=4) -> Teacher:
    return Teacher(SR3UNet(**TINY_UNET), process or DDPMProcess(), scale=scale)


def twin(process=None, scale=4) -> Teacher:
    process = process or DDPMProcess()
    config = dict(TINY_STUDENT, num_train_timesteps=process.num_train_timesteps)
    return Teacher(build_teacher_denoiser("twin", {}, config), process, scale=scale)


KINDS = {"sr3-ddpm": lambda **k: sr3(**k), "sr3-resshift": lambda **k: sr3(ResShiftProcess(), **k),
         "twin-ddpm": lambda **k: twin(**k), "twin-resshift": lambda **k: twin(ResShiftProcess(), **k)}


def patches(n=4, size=8):
    hr = torch.rand(n, 3, size, size)
    cond = F.interpolate(F.avg_pool2d(hr, 4), scale_factor=4, mode="bicubic")
    return hr, cond


# ---- SR3 ----------------------------------------------------------------------------------------------------------

def test_sr3_paper_config_params_and_ops():
    with torch.device("meta"):
        unet = SR3UNet().eval()
    c = measure(unet)
    assert c.raw_params == 55_407_235 and c.binary_params == 0
    assert c.ops == 176_408_113_152
    assert (format_params(c.params), format_ops(c.ops)) == ("55.41M", "176.41G")
    assert c.ops_by_kind["upsample_ops"] == 14_680_064 and c.ops_by_kind["groupnorm_ops"] == 5 * 112_721_920


# ---- both teachers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, factor", [("sr3-ddpm", 2.0), ("sr3-resshift", 5.0), ("twin-ddpm", 1.8),
                                          ("twin-resshift", 5.0)])
def test_tiny_teacher_overfits_a_few_patches(kind, factor):
    """The teacher's own loss on four fixed 8x8 patches falls at least `factor`-fold in 80 Adam steps."""
    hr, cond = patches()
    teacher = KINDS[kind]()
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
    assert after * factor < before, f"{kind}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_save_load_reproduces_outputs_exactly(kind, tmp_path):
    teacher = KINDS[kind](scale=2).freeze()
    teacher.save_pretrained(tmp_path)
    loaded = load_teacher(tmp_path)
    assert type(loaded) is Teacher and loaded.config.scale == 2 and type(loaded.process) is type(teacher.process)
    assert not any(p.requires_grad for p in loaded.unet.parameters())
    hr, cond = patches(2, 12)
    t = torch.tensor([1, 10])
    assert torch.equal(teacher.predict(hr, cond, t), loaded.predict(hr, cond, t))
    steps = 4 if isinstance(teacher.process, DDPMProcess) else None
    a = teacher.sample(cond, steps, generator=torch.Generator().manual_seed(3))
    b = loaded.sample(cond, steps, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == cond.shape and 0 <= a.min() and a.max() <= 1


def test_deterministic_resshift_sampler_is_deterministic():
    teacher = sr3(ResShiftProcess()).freeze()
    _, cond = patches(2, 8)
    noise = torch.randn_like(cond)
    a = teacher.sample(cond, noise=noise, deterministic=True, generator=torch.Generator().manual_seed(0))
    b = teacher.sample(cond, noise=noise, deterministic=True, generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)
    c = teacher.sample(cond, noise=noise, deterministic=False, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a, c)


def test_ddim_from_fixed_noise_is_deterministic():
    teacher = sr3().freeze()
    _, cond = patches(2, 8)
    noise = torch.randn_like(cond)
    assert torch.equal(teacher.sample(cond, 5, noise=noise), teacher.sample(cond, 5, noise=noise))
    with pytest.raises(ValueError, match="noise has shape"):
        teacher.sample(cond, 5, noise=noise[:, :, :4])


def test_twin_is_the_student_with_binarization_off_and_its_features_align():
    teacher = twin().freeze()
    student = BiDiffSRUNet(**TINY_STUDENT).eval()
    assert teacher.unet.config.binarizer == "none" and set(teacher.unet.state_dict()) == set(student.state_dict())
    assert student.init_from_teacher(teacher.unet) == []
    for name, value in teacher.unet.state_dict().items():
        assert torch.equal(student.state_dict()[name], value), name
    x, cond = patches(2, 16)
    t = torch.tensor([5, 1200])
    out, t_feats = teacher.features(x, cond, t)
    _, s_feats = student(x, cond, t, return_features=True)
    assert {k: v.shape for k, v in t_feats.items()} == {k: v.shape for k, v in s_feats.items()}
    torch.testing.assert_close(out, teacher.predict(x, cond, t))  # the tap does not change the output
    # started from the twin, the student's features follow the teacher's channel for channel
    for name in t_feats:
        sim = F.cosine_similarity(s_feats[name].flatten(2), t_feats[name].flatten(2), dim=2).mean()
        assert sim > 0.5, f"{name}: cosine {sim:.2f}"


def test_twin_of_a_bbcu_student_has_one_timestep_group():
    config = BiDiffSRUNet.twin_config(dict(TINY_STUDENT, binarizer="bbcu"))
    assert config["binarizer"] == "none" and config["timestep_groups"] == 1
    student = BiDiffSRUNet(**TINY_STUDENT, binarizer="bbcu")
    assert student.init_from_teacher(BiDiffSRUNet(**config)) == []


def test_starting_from_an_unaligned_teacher_is_refused_with_the_reason():
    student = BiDiffSRUNet(**TINY_STUDENT)
    with pytest.raises(ValueError, match="SR3UNet, not a BiDiffSRUNet"):
        student.init_from_teacher(SR3UNet(**TINY_UNET))
    wider = BiDiffSRUNet(**BiDiffSRUNet.twin_config(dict(TINY_STUDENT, base_channels=32, norm_groups=4)))
    with pytest.raises(ValueError, match="base_channels is 32 in the teacher but 16 in the student"):
        student.init_from_teacher(wider)


def test_per_sample_timesteps_in_the_teacher():
    teacher = sr3().freeze()
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
    with pytest.raises(ValueError, match="'StableDiffusionPipeline', which is not a teacher folder"):
        load_teacher(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid teacher index"):
        load_teacher(tmp_path)


def test_scale_mismatch_is_an_error():
    teacher = sr3(scale=4)
    teacher.check_scale(4)
    with pytest.raises(ValueError, match="trained for x4 super-resolution but the data is x2"):
        teacher.check_scale(2)


@pytest.mark.parametrize("kind", ["sr3-ddpm", "twin-resshift"])
def test_evaluation_rows(kind):
    """Bicubic, the models' own condition, the teacher and the student on the teacher's process."""
    from pipeline.data import ValImage
    from pipeline.evaluate import evaluate

    hr, _ = patches(1, 24)
    images = [ValImage("x", hr[0], F.avg_pool2d(hr, 4)[0])]
    teacher = KINDS[kind]().freeze()
    student = BiDiffSRUNet(**TINY_STUDENT, num_train_timesteps=teacher.process.num_train_timesteps)
    steps = 3 if isinstance(teacher.process, DDPMProcess) else None
    result = evaluate(images, 4, student, teacher, student_process=teacher.process, num_inference_steps=steps)
    assert set(result["mean"]) == {"bicubic", "condition", "teacher", "student"}
    with pytest.raises(ValueError, match="needs its diffusion process"):
        evaluate(images, 4, student, None)


def test_evaluation_tiles_large_images_and_leaves_small_ones_as_they_were():
    """Images that fit in one tile score exactly as untiled sampling; larger ones are sampled in tiles."""
    from pipeline.data import ValImage
    from pipeline.evaluate import evaluate

    hr, _ = patches(1, 96)
    images = [ValImage("x", hr[0], F.avg_pool2d(hr, 4)[0])]
    teacher = sr3().freeze()
    whole = evaluate(images, 4, None, teacher, num_inference_steps=2, tile_size=512)
    cond = __import__("pipeline.resize", fromlist=["upsample_cond"]).upsample_cond(images[0].lr[None], 4).clamp(0, 1)
    direct = teacher.sample(cond, 2, generator=torch.Generator().manual_seed(10))
    from pipeline.metrics import psnr_y

    assert whole["mean"]["teacher"]["psnr"] == pytest.approx(float(psnr_y(direct, images[0].hr[None], 4)), abs=1e-9)
    tiled = evaluate(images, 4, None, teacher, num_inference_steps=2, tile_size=64, tile_overlap=16)
    assert tiled["mean"]["teacher"]["psnr"] != whole["mean"]["teacher"]["psnr"]
