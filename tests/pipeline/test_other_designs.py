"""The other two seed papers' students: BiMaCoSR's matrix-compression branches and BiDM's Timestep-friendly Binary
Structure (activation-scale map and |lambda| shortcut in the conv, cross-timestep feature connection in the UNet)."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.preflight import load_checked
from pipeline.recipe import RecipeError, load_recipe
from pipeline.sr_pipeline import super_resolve
from students.bidiffsr import BiDiffSRUNet
from students.binarizers import BINARIZERS, _identity
from students.binary import BinaryConv2d, BinaryLinear, MatrixBranches
from students.complexity import measure_student
from students.packing import save_packed, unpack_student
from teachers import DDPMProcess, ResShiftProcess
from teachers.process import denoise_batch, noisy_batch

ROOT = Path(__file__).resolve().parents[2]


def full_precision(model: torch.nn.Module) -> torch.nn.Module:
    """Switch every binarized layer of `model` to full precision (quantizers -> identity), nothing else changed."""
    for m in model.modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            m.binarizer = dataclasses.replace(m.binarizer, quantize_input=_identity, quantize_weight=_identity)
    return model


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return module


# ---- BiMaCoSR ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cin, cout, k, stride", [(12, 12, 3, 1), (8, 20, 3, 1), (20, 8, 1, 1), (10, 14, 3, 2),
                                                  (4, 4, 1, 1)])
def test_the_branches_split_a_conv_exactly(cin, cout, k, stride):
    w0 = torch.randn(cout, cin, k, k, dtype=torch.float64)
    branches = MatrixBranches(cin, cout, stride).double()
    w_main = branches.absorb(w0)
    x = torch.randn(2, cin, 9, 11, dtype=torch.float64)
    split = F.conv2d(x, w_main, stride=stride, padding=k // 2) + branches(x)
    assert torch.allclose(split, F.conv2d(x, w0, stride=stride, padding=k // 2), atol=1e-12)

    nonzeros = min(2 * max(cin, cout), cin * cout)
    assert branches.sparse_values.numel() == nonzeros and branches.rank == min(8, cin, cout)
    averaged = w0.mean(dim=(2, 3)).flatten()
    assert set(branches.sparse_index.tolist()) == set(averaged.abs().topk(nonzeros).indices.tolist())
    assert torch.equal(branches.sparse_values, averaged[branches.sparse_index])
    # the low-rank branch is the best rank-r approximation of the kernel average of what is left (S came off one tap)
    remainder = averaged.index_add(0, branches.sparse_index, -branches.sparse_values / k**2).reshape(cout, cin)
    top = torch.linalg.svdvals(remainder)[: branches.rank]
    assert torch.allclose(torch.linalg.svdvals(branches.up @ branches.down)[: branches.rank], top, atol=1e-10)
    # and both were taken off the centre tap only
    off_centre = torch.ones(k, k, dtype=torch.bool)
    off_centre[k // 2, k // 2] = False
    assert torch.equal(w_main[:, :, off_centre], w0[:, :, off_centre])


def test_the_paper_size_branches_keep_2_max_nonzeros_and_rank_8():
    branches = MatrixBranches(320, 640)
    assert branches.sparse_values.numel() == 1280 and branches.rank == 8  # spec: a 320 -> 640 conv keeps 1280


def unit_from_twin(binarizer: str) -> tuple[BinaryConv2d, BinaryConv2d, torch.Tensor]:
    """(random full-precision twin unit, a `binarizer` unit started from it, an input), in float64."""
    twin = randomize(BinaryConv2d(12, 12, 3, BINARIZERS["none"])).double()
    unit = BinaryConv2d(12, 12, 3, BINARIZERS[binarizer]).double()
    unit.load_state_dict(twin.state_dict(), strict=False)
    unit.start_from_full_precision()
    return twin, unit, torch.randn(2, 12, 8, 8, dtype=torch.float64)


def test_a_bimacosr_inside_unit_starts_equal_to_its_full_precision_twin_unit():
    twin, unit, x = unit_from_twin("bimacosr_inside")
    binarized = unit(x)
    assert not torch.allclose(binarized, twin(x), atol=1e-3)
    assert torch.allclose(full_precision(unit)(x), twin(x), atol=1e-12)


def test_a_bimacosr_inside_student_starts_equal_to_its_twin(tiny_config):
    student = BiDiffSRUNet(**tiny_config, binarizer="bimacosr_inside").double()
    twin = randomize(BiDiffSRUNet(**BiDiffSRUNet.twin_config(student.config))).double().eval()
    assert student.init_from_teacher(twin) == []  # every student tensor comes from the twin
    student.eval()
    x, cond, t = torch.randn(2, 3, 32, 32).double(), torch.rand(2, 3, 32, 32).double(), torch.tensor([3, 1900])
    assert torch.allclose(full_precision(student)(x, cond, t), twin(x, cond, t), atol=1e-9)


def test_the_official_bimacosr_unit_adds_its_branches_after_the_activation_on_the_raw_input():
    twin, unit, x = unit_from_twin("bimacosr")
    group = torch.tensor([0, 3])
    u = unit.shift(x, group)
    a = u.abs().mean(dim=1, keepdim=True) * torch.sign(u)
    main = unit.activation(F.conv2d(a, unit.binary_weight(), padding=1), group)
    assert torch.allclose(unit(x, group), main + unit.branches(x) + x, atol=1e-12)  # + the unit's shortcut
    # in full precision the split no longer adds up to the twin: the activation sits between the parts
    assert not torch.allclose(full_precision(unit)(x, group), twin(x, group), atol=1e-3)


@pytest.mark.parametrize("cin, cout", [(6, 6), (6, 10)])
def test_the_official_bimacosr_unit_at_a_stride_keeps_the_official_rules(cin, cout):
    unit = randomize(BinaryConv2d(cin, cout, 3, BINARIZERS["bimacosr"], stride=2)).double()
    x = torch.randn(1, cin, 8, 8, dtype=torch.float64)
    u = unit.shift(x, None)
    main = unit.activation(F.conv2d(u.abs().mean(dim=1, keepdim=True) * torch.sign(u), unit.binary_weight(),
                                    stride=2, padding=1), None)
    sparse = unit.branches.matrix(low_rank=False)
    # equal widths: the average-pooled input instead of both branches; a width change: the sparse branch alone
    extra = F.avg_pool2d(x, 2) if cin == cout else F.conv2d(x, sparse[:, :, None, None], stride=2)
    assert torch.allclose(unit(x), main + extra, atol=1e-12)


def test_the_official_bimacosr_binarizes_every_linear_and_splits_it_exactly(tiny_config):
    student = BiDiffSRUNet(**tiny_config, binarizer="bimacosr").double()
    linears = {n for n, m in student.named_modules() if isinstance(m, BinaryLinear)}
    assert {"time_embedding.linear_1", "time_embedding.linear_2", "mid_blocks.0.time_proj"} <= linears
    # the full-precision decoder levels keep full-precision linears, as their convs
    fp = [n for n, m in student.named_modules() if isinstance(m, torch.nn.Linear)]
    assert fp and all(n.startswith("decoder.") for n in fp)
    twin = randomize(BiDiffSRUNet(**BiDiffSRUNet.twin_config(student.config))).double()
    assert student.init_from_teacher(twin) == []
    layer, original = student.time_embedding.linear_1, twin.time_embedding.linear_1
    v = torch.randn(3, layer.in_features, dtype=torch.float64)
    assert torch.allclose(full_precision(layer)(v), original(v), atol=1e-12)
    binary = BinaryLinear(layer.in_features, layer.out_features, BINARIZERS["bimacosr"]).double()
    binary.load_state_dict(layer.state_dict())
    a = v.abs().mean(dim=1, keepdim=True) * torch.sign(v)
    wb = binary.weight.abs().mean(dim=1, keepdim=True) * torch.sign(binary.weight)
    assert torch.allclose(binary(v), a @ wb.T + binary.bias + binary.branches(v), atol=1e-12)


def test_the_bimacosr_binary_branch_follows_the_code():
    unit = BinaryConv2d(6, 6, 3, BINARIZERS["bimacosr"])
    u = torch.randn(2, 6, 5, 5, requires_grad=True)
    a = unit.binarizer.quantize_input(u, unit)
    scale = u.detach().abs().mean(dim=1, keepdim=True)
    assert torch.equal(a, scale * torch.sign(u.detach()))
    a.sum().backward()  # ApproxSign times the detached per-pixel scale
    assert torch.allclose(u.grad, scale * (2 - 2 * u.detach().abs()).clamp_min(0))
    assert unit.bias is None and unit.activation is not None and unit.branches is not None


def test_a_bimacosr_student_must_start_from_full_precision_weights(tmp_path):
    overrides = [f'run.output_dir="{tmp_path / "run"}"', 'student.unet.binarizer="bimacosr"',
                 "student.init_from_teacher=false", "stages.2.spd_weight=0"]
    with pytest.raises(RecipeError, match="student.unet.binarizer.*must start from its full-precision twin"):
        load_checked(ROOT / "recipes" / "tiny.toml", overrides)


# ---- BiDM ----------------------------------------------------------------------------------------------------------

def test_the_bidm_unit_is_the_official_formula():
    unit = randomize(BinaryConv2d(6, 6, 3, BINARIZERS["bidm"]))
    with torch.no_grad():
        unit.shortcut_scale.fill_(-0.4)  # |lambda|
    fresh = BinaryConv2d(6, 6, 3, BINARIZERS["bidm"])
    assert torch.all(fresh.scale_map.weight == 1 / 9) and fresh.scale_map.bias is not None
    assert fresh.shortcut_scale.item() == pytest.approx(0.3) and fresh.bias is None and fresh.activation is None
    x = torch.randn(2, 6, 7, 7)
    w_b = unit.weight.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.sign(unit.weight)
    y = F.conv2d(torch.sign(x + unit.shift.bias[0][:, None, None]), w_b, padding=1)
    scale = F.conv2d(x.abs().mean(dim=1, keepdim=True), unit.scale_map.weight, unit.scale_map.bias, padding=1)
    assert torch.allclose(unit(x), y * scale + 0.4 * x, atol=1e-5)


@pytest.mark.parametrize("cin, cout, stride", [(6, 6, 2), (6, 10, 1), (6, 10, 2)])
def test_the_bidm_shortcut_follows_the_output_shape(cin, cout, stride):
    unit = BinaryConv2d(cin, cout, 3, BINARIZERS["bidm"], stride=stride)
    x = torch.randn(1, cin, 8, 8)
    assert unit(x).shape == (1, cout, 8 // stride, 8 // stride)
    assert (unit.projection is not None) == (cin != cout)
    if cin == cout:
        assert torch.allclose(unit.shortcut(x), 0.3 * F.avg_pool2d(x, 2))
    assert not BinaryConv2d(cin, cout, 3, BINARIZERS["bidm"], stride=stride, shortcut=False).has_shortcut


def tbs_student(tiny_config, blocks=2, **extra):
    return BiDiffSRUNet(**{**tiny_config, **extra}, binarizer="bidm", cross_timestep_blocks=blocks)


def test_cross_timestep_mixing_is_per_sample_detached_and_learnable(tiny_config):
    model = tbs_student(tiny_config).eval()  # decoder order: up.1.0, up.1.1, up.0.0, up.0.1; the last 2 are mixed
    assert model.cross_timestep_coefficients.shape == (100, 2)
    assert torch.all(model.cross_timestep_coefficients == 0.3)
    with torch.no_grad():
        model.cross_timestep_coefficients.zero_()
        model.cross_timestep_coefficients[1999 // 20] = 1.0  # 100 bins of 20 steps for T = 2000
    x, cond, t = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.tensor([5, 1999])
    _, plain = model(x, cond, t, return_features=True)
    cache = {k: torch.randn_like(v, requires_grad=True) for k, v in plain.items()}
    out, mixed = model(x, cond, t, return_features=True, cache=cache)
    for name in plain:  # sample 0 has c = 0: nothing changes
        assert torch.allclose(mixed[name][0], plain[name][0], atol=1e-6)
    assert torch.equal(mixed["up.1.1"][1], plain["up.1.1"][1])  # before the mixed blocks
    assert torch.equal(mixed["up.0.1"][1], cache["up.0.1"][1])  # c = 1: the cached feature itself
    assert not torch.allclose(out[1], model(x, cond, t)[1])
    with torch.no_grad():
        model.cross_timestep_coefficients.fill_(0.3)
    model(x, cond, t, cache=cache).sum().backward()
    assert all(v.grad is None for v in cache.values())  # the cache is detached
    used = model.cross_timestep_coefficients.grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert used == [0, 99]


def test_a_cache_needs_the_connection(tiny_config):
    model = BiDiffSRUNet(**tiny_config, binarizer="bidm")
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="no cross-timestep connection"):
        model(x, x, torch.tensor([3]), cache={})
    with pytest.raises(ValueError, match="cross_timestep_blocks=5 must be between 0 .* 4"):
        tbs_student(tiny_config, blocks=5)


class Recorder(torch.nn.Module):
    """A student wrapper that records every call: timesteps, inputs, whether gradients were on, the cache given and
    the features returned."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []
        self.config, self.size_multiple = model.config, model.size_multiple

    def forward(self, x, cond, t, return_features=False, cache=None):
        out, features = self.model(x, cond, t, return_features=True, cache=cache)
        self.calls.append(dict(x=x, t=t, cache=cache, features=features, grad=torch.is_grad_enabled()))
        return (out, features) if return_features else out


@pytest.mark.parametrize("process", [ResShiftProcess(prediction_type="residual"), DDPMProcess()],
                         ids=["resshift", "ddpm"])
def test_training_mixes_in_a_pass_one_step_noisier_from_the_same_noise(tiny_config, process):
    model = Recorder(tbs_student(tiny_config, num_train_timesteps=process.num_train_timesteps))
    hr, cond = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    top = process.num_train_timesteps - 1
    b = noisy_batch(process, hr, cond, torch.Generator().manual_seed(0), t=torch.tensor([3, top]))
    out = denoise_batch(model, process, b, cross_timestep=True)
    first, main = model.calls
    t_next = torch.tensor([4, top])
    assert torch.equal(first["t"], t_next) and not first["grad"] and first["cache"] is None
    assert torch.equal(first["x"], process.model_input(process.add_noise(b.x0, b.noise, t_next, b.y), t_next))
    assert torch.equal(main["t"], b.t) and main["grad"] and main["cache"] is first["features"]
    assert torch.equal(out, model.model(b.x_in, b.y_in, b.t, cache=first["features"]))
    model.calls.clear()
    denoise_batch(model, process, b)  # without the connection: one plain pass
    assert len(model.calls) == 1 and model.calls[0]["cache"] is None


def test_sampling_mixes_in_the_previous_step_as_training_does(tiny_config):
    # On ResShift's full 15-step chain the previous sampling step is exactly t + 1, the training cache's timestep.
    process = ResShiftProcess(prediction_type="residual")
    model = Recorder(tbs_student(tiny_config, num_train_timesteps=process.num_train_timesteps).eval())
    cond = torch.rand(1, 3, 32, 32)
    sr = super_resolve(model, process, cond, generator=torch.Generator().manual_seed(1))
    calls = model.calls
    assert [c["t"].item() for c in calls] == list(range(14, -1, -1))
    assert calls[0]["cache"] is None
    assert all(c["cache"] is p["features"] for p, c in zip(calls, calls[1:]))
    # a student without the connection samples with no cache at all
    plain = Recorder(tbs_student(tiny_config, blocks=0, num_train_timesteps=15).eval())
    super_resolve(plain, process, cond, generator=torch.Generator().manual_seed(1))
    assert all(c["cache"] is None for c in plain.calls) and sr.shape == cond.shape


def test_a_one_step_recipe_refuses_the_connection(tmp_path):
    text = (ROOT / "recipes" / "tiny.toml").read_text().replace('type = "feature_distill"', 'type = "one_step"')
    path = tmp_path / "one_step.toml"
    path.write_text(text.replace("../shared", str(ROOT.parent / "shared")))
    with pytest.raises(RecipeError, match="cross_timestep_blocks.*no previous sampling step"):
        load_checked(path, [f'run.output_dir="{tmp_path / "run"}"', 'student.unet.binarizer="bidm"',
                           "student.unet.cross_timestep_blocks=2"])


# ---- both: packing, counting, the whole pipeline ---------------------------------------------------------------------

@pytest.mark.parametrize("binarizer, blocks", [("bidm", 2), ("bimacosr", 0), ("bimacosr_inside", 0)])
def test_packed_students_are_bit_identical_with_their_branches_and_cache(tiny_config, tmp_path, binarizer, blocks):
    model = randomize(BiDiffSRUNet(**tiny_config, binarizer=binarizer, cross_timestep_blocks=blocks)).eval()
    loaded = unpack_student(save_packed(model, tmp_path / "s.safetensors"))
    x, cond, t = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.tensor([7, 1800])
    out, features = model(x, cond, t, return_features=True)
    assert torch.equal(out, loaded(x, cond, t))
    if blocks:
        assert torch.equal(model(x, cond, t, cache=features), loaded(x, cond, t, cache=features))


@pytest.mark.parametrize("binarizer", ["bimacosr", "bimacosr_inside"])
def test_complexity_counts_the_branches_in_full_precision(binarizer):
    base, bimacosr = measure_student(), measure_student(binarizer=binarizer)
    extra = linear_weights = 0
    with torch.device("meta"):
        model = BiDiffSRUNet(binarizer=binarizer)
    for m in model.modules():
        if isinstance(m, MatrixBranches):
            extra += m.sparse_values.numel() + m.rank * (m.in_channels + m.out_channels)
        if isinstance(m, BinaryLinear):
            linear_weights += m.weight.numel()
    assert (linear_weights > 0) == (binarizer == "bimacosr")  # the official unit binarizes the linears too
    assert bimacosr.binary_params == base.binary_params + linear_weights
    assert extra > 0 and bimacosr.ops_by_kind["branch_macs"] > 0
    # the BI-DiffSR unit (TaR/TaA) + the branches, less the linears' weights that became binary
    assert bimacosr.fp_params == base.fp_params + extra - linear_weights
    bidm = measure_student(binarizer="bidm", cross_timestep_blocks=8)
    assert bidm.binary_macs == base.binary_macs and bidm.fp_params > measure_student(binarizer="bnn").fp_params


@pytest.mark.slow
@pytest.mark.parametrize("binarizer, blocks", [("bidm", 2), ("bimacosr", 0)])
def test_both_designs_train_distil_evaluate_and_publish(tmp_path, monkeypatch, binarizer, blocks):
    from pipeline.sr_pipeline import BiDiffSRPipeline
    from pipeline.trainer import Trainer

    if not (ROOT.parent / "shared" / "data" / "Set14").is_dir():
        pytest.skip("../shared/data not present")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", [
        f'run.output_dir="{out}"', f'student.unet.binarizer="{binarizer}"',
        f"student.unet.cross_timestep_blocks={blocks}", "stages.2.output_weight=1.0"])
    result = Trainer(recipe).run()
    assert set(result["mean"]) == {"bicubic", "condition", "teacher", "student"}
    pipe = BiDiffSRPipeline.from_pretrained(out / "publish")
    assert pipe.unet.config.binarizer == binarizer and pipe.unet.config.cross_timestep_blocks == blocks
    cond = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    packed = unpack_student(out / "publish" / "student_1bit.safetensors")
    with torch.no_grad():  # one evaluation: the same network up to float rounding
        forwards = [m(cond, cond, torch.tensor([1999])) for m in (pipe.unet.eval(), packed)]
    assert torch.allclose(*forwards, atol=1e-5)
    runs = [super_resolve(m, pipe.scheduler, cond, 3, generator=torch.Generator().manual_seed(2))
            for m in (pipe.unet.eval(), packed)]
    assert torch.allclose(*runs, atol=1e-3)  # x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) at t = 1999 amplifies rounding
