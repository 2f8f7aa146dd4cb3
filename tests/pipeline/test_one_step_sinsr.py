"""The `one_step` stage's SinSR terms against SinSR's `training_losses_distill` written out step by step (learn_xT and
finetune_use_gt as `configs/SinSR.yaml` sets them), at test sizes on a pixel-space ResShift chain."""

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_STUDENT
from pipeline.stages import OneStepStage
from students.bidiffsr import BiDiffSRUNet
from teachers import ResShiftProcess, Teacher

T = 4


def models():
    torch.manual_seed(0)
    teacher_net = BiDiffSRUNet(**BiDiffSRUNet.twin_config(dict(TINY_STUDENT, num_train_timesteps=T, timestep_groups=2)))
    with torch.no_grad():
        for p in teacher_net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    teacher = Teacher(teacher_net, ResShiftProcess(num_train_timesteps=T)).freeze()
    student = BiDiffSRUNet(**dict(TINY_STUDENT, num_train_timesteps=T, timestep_groups=2))
    return teacher, student


def sinsr_losses(teacher, student, hr, lr, cond, generator):
    """SinSR's distillation loss, as the release computes it, in pixel space ([-1, 1], z = x)."""
    process = teacher.process
    etas, kappa = process.etas.float(), float(process.config.kappa)
    z_y = cond.clamp(0, 1) * 2 - 1
    noise = torch.randn(z_y.shape, generator=generator)
    z_t = z_y + kappa * etas[-1].sqrt() * noise
    with torch.no_grad():  # SinSR's deterministic sampler: x_{t-1} = k x0 + m x_t + j y
        x = z_t
        for i in reversed(range(T)):
            x0 = teacher.unet(x / (kappa**2 * etas[i] + 1).sqrt(), z_y, torch.full((1,), i)).clamp(-1, 1)
            x = process.ddim_k[i].float() * x0 + process.ddim_m[i].float() * x + process.ddim_j[i].float() * z_y
        z_teacher = x
    scale = lambda v: v / (kappa**2 * etas[T - 1] + 1).sqrt()  # noqa: E731  (_scale_input at t = T-1)
    top, zero = torch.full((hr.shape[0],), T - 1), torch.zeros(hr.shape[0], dtype=torch.long)
    distill = F.mse_loss(student(scale(z_t), z_y, top), z_teacher)
    xt = F.mse_loss(student(scale(z_teacher), z_y, zero), z_t)
    z_gt = hr * 2 - 1
    with torch.no_grad():
        xt_gt = student(scale(z_gt), z_y, zero)
    gt = F.mse_loss(student(scale(xt_gt), z_y, top), z_gt)
    return distill, xt, gt


def test_the_one_step_stage_computes_sinsr_losses():
    teacher, student = models()
    lr = torch.rand(2, 3, 8, 8)
    cond = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    hr = torch.rand(2, 3, 32, 32)
    batch = {"hr": hr, "lr": lr, "cond": cond}
    stage = OneStepStage(teacher, teacher.process.one_step_variant(), xt_weight=0.5, gt_weight=2.0)
    loss, logs = stage.loss(student, batch, torch.Generator().manual_seed(4))
    distill, xt, gt = sinsr_losses(teacher, student, hr, lr, cond, torch.Generator().manual_seed(4))
    torch.testing.assert_close(logs["distill"], distill.detach())
    torch.testing.assert_close(logs["xt"], xt.detach())
    torch.testing.assert_close(logs["gt"], gt.detach())
    torch.testing.assert_close(loss, distill + 0.5 * xt + 2.0 * gt)
    loss.backward()  # every term reaches the student
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)

    alone, alone_logs = OneStepStage(teacher, teacher.process.one_step_variant()).loss(
        student, batch, torch.Generator().manual_seed(4))
    torch.testing.assert_close(alone, distill)  # the weights at 0: the distillation term only
    assert set(alone_logs) == {"loss"}


def test_patches_the_teacher_cannot_take_are_refused_before_training():
    teacher, _ = models()
    stage = OneStepStage(teacher, ResShiftProcess(num_train_timesteps=T).one_step_variant())
    stage.check_patch(32)
    with pytest.raises(ValueError, match="multiples of the teacher's 2 pixels; got 33"):
        stage.check_patch(33)
