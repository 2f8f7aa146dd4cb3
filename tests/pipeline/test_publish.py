"""Publishing: the diffusers-format folder, one-line loading, tiled inference, the CLI, and hub pushes against a
fake hub on 127.0.0.1 (the real huggingface_hub and diffusers code runs in a subprocess pointed at it)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fake_hub import FakeHub
from pipeline import upscale
from pipeline.publish import PACKED_NAME, PublishError, push_folder, write_model_folder
from pipeline.sr_pipeline import BiDiffSRPipeline, tile_batch_for, tiled_super_resolve
from students.bidiffsr import BiDiffSRUNet
from students.packing import unpack_student
from teachers import DDPMProcess, ResShiftProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def published(tiny_config, tmp_path):
    student = BiDiffSRUNet(**tiny_config).eval()
    metrics = {"scale": 4, "num_images": 1, "num_inference_steps": 2, "seed": 10, "metrics": ["psnr", "ssim"],
               "mean": {"bicubic": {"psnr": 25.0, "ssim": 0.7}, "student": {"psnr": 24.5, "ssim": 0.69}}}
    folder = write_model_folder(student, DDPMProcess(), 4, tmp_path / "publish", metrics=metrics,
                                recipe={"run": {"name": "t"}}, repo_id="user/tiny-sr")
    return student, folder


def folder_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lr_image(w=9, h=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())


def test_folder_contents_and_one_line_load(published):
    student, folder = published
    written = {p.name for p in folder.iterdir()}
    assert {"model_index.json", "unet", "scheduler", PACKED_NAME, "README.md", "recipe.json"} <= written
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["bidiffsr_unet", "BiDiffSRUNet"] and index["scale"] == 4
    assert index["_class_name"] == ["pipeline_bidiffsr", "BiDiffSRPipeline"]
    assert index["scheduler"] == ["bidiffsr_process", "DDPMProcess"]
    card = (folder / "README.md").read_text()
    assert "| student | 24.50 | 0.6900 |" in card and "user/tiny-sr" in card and "pipeline_tag: image-to-image" in card
    pipe = BiDiffSRPipeline.from_pretrained(folder)
    out = pipe(lr_image(), num_inference_steps=3, seed=1)
    assert out.images[0].size == (36, 28)
    again = pipe(lr_image(), num_inference_steps=3, seed=1, output_type="pt").images[0]
    assert torch.equal(torch.from_numpy(__import__("numpy").array(out.images[0])).permute(2, 0, 1),
                       (again * 255).round().byte())
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(unpack_student(folder / PACKED_NAME)(x, x, 5), student(x, x, 5))


def test_tiling_matches_untiled_where_tiles_do_not_overlap_edges(tiny_config):
    student = BiDiffSRUNet(**tiny_config).eval()
    cond = torch.rand(1, 3, 40, 56)
    process = DDPMProcess()
    full = tiled_super_resolve(student, process, cond, 2, generator=torch.Generator().manual_seed(0), tile=64)
    tiled = tiled_super_resolve(student, process, cond, 2, generator=torch.Generator().manual_seed(0), tile=16,
                                overlap=4)
    assert full.shape == tiled.shape == cond.shape
    assert torch.isfinite(tiled).all() and 0 <= tiled.min() and tiled.max() <= 1
    with pytest.raises(ValueError, match="tile_size=15"):
        tiled_super_resolve(student, process, cond, 2, tile=15, overlap=2)


@pytest.mark.parametrize("process, calls", [(ResShiftProcess(prediction_type="residual", num_train_timesteps=4), 4),
                                            (ResShiftProcess().one_step_variant(), 1),
                                            (DDPMProcess().one_step_variant(), 1)])
def test_published_students_sample_on_their_own_process(tiny_config, tmp_path, process, calls):
    """One line loads a ResShift-process student or a one-step student, and it samples as its process says."""
    config = dict(tiny_config, num_train_timesteps=process.num_train_timesteps, timestep_groups=2)
    folder = write_model_folder(BiDiffSRUNet(**config).eval(), process, 4, tmp_path / "publish")
    pipe = BiDiffSRPipeline.from_pretrained(folder)
    assert type(pipe.scheduler) is type(process) and pipe.scheduler.config.one_step == process.config.one_step
    seen = []
    pipe.unet.register_forward_hook(lambda m, i, o: seen.append(int(i[2].reshape(-1)[0])))
    out = pipe(lr_image(8, 8), seed=0, output_type="pt").images[0]
    assert out.shape == (3, 32, 32) and len(seen) == calls and seen[0] == process.num_train_timesteps - 1
    card = (folder / "README.md").read_text()
    assert type(process).__name__ in card and ("one-step" in card) == bool(process.config.one_step)


def test_upscale_cli(published, tmp_path, capsys):
    _, folder = published
    src = tmp_path / "in"
    src.mkdir()
    lr_image().save(src / "a.png")
    lr_image(12, 5, seed=1).save(src / "b.jpg")
    assert upscale.main([str(src), str(tmp_path / "out"), "--model", str(folder), "--steps", "2", "--tile", "32",
                         "--overlap", "8"]) == 0
    assert Image.open(tmp_path / "out" / "a.png").size == (36, 28)
    assert Image.open(tmp_path / "out" / "b.png").size == (48, 20)
    assert upscale.main([str(src / "a.png"), str(tmp_path / "half.png"), "--model", str(folder), "--steps", "2",
                         "--dtype", "bfloat16", "--quiet"]) == 0
    assert Image.open(tmp_path / "half.png").size == (36, 28)
    with pytest.raises(SystemExit):
        upscale.main([str(src / "a.png"), str(tmp_path / "zero.png"), "--model", str(folder), "--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_push_without_credentials_keeps_the_folder(published, monkeypatch):
    _, folder = published
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = folder_digest(folder)
    with pytest.raises(PublishError, match="no Hugging Face credentials"):
        push_folder(folder, "user/tiny-sr")
    assert folder_digest(folder) == before


def test_push_without_network_keeps_the_folder(published):
    _, folder = published
    before = folder_digest(folder)
    with pytest.raises(PublishError, match=r"push to user/tiny-sr failed .*intact"):
        push_folder(folder, "user/tiny-sr", token="hf_anything")  # HF_HUB_OFFLINE=1 in the tests: no network
    assert folder_digest(folder) == before


PUSH_AND_LOAD = """
import sys, torch
from diffusers import DiffusionPipeline
from pipeline.publish import push_folder
from pipeline.sr_pipeline import BiDiffSRPipeline
folder, out = sys.argv[1], sys.argv[2]
print(push_folder(folder, "user/tiny-sr"))
pipe = BiDiffSRPipeline.from_pretrained("user/tiny-sr")
x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(3))
torch.save(pipe(x, num_inference_steps=2, seed=4, output_type="pt").images[0], out)
generic = DiffusionPipeline.from_pretrained("user/tiny-sr", trust_remote_code=True)  # diffusers' own download path
assert type(generic).__name__ == "BiDiffSRPipeline", type(generic)
torch.save(generic(x, num_inference_steps=2, seed=4, output_type="pt").images[0], out + ".generic")
"""


@pytest.mark.slow
def test_push_to_hub_and_load_back(published, tmp_path):
    _, folder = published
    before = folder_digest(folder)
    with FakeHub() as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=hub.token, HF_HOME=str(tmp_path / "hf"),
                   PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1")
        proc = subprocess.run([sys.executable, "-c", PUSH_AND_LOAD, str(folder), str(tmp_path / "out.pt")],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert set(before) <= set(hub.repos["user/tiny-sr"])
        assert hub.repos["user/tiny-sr"]["model_index.json"] == (folder / "model_index.json").read_bytes()
    assert folder_digest(folder) == before
    local = BiDiffSRPipeline.from_pretrained(folder)
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(3))
    expected = local(x, num_inference_steps=2, seed=4, output_type="pt").images[0]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    assert torch.equal(torch.load(tmp_path / "out.pt.generic"), expected)


def test_upscale_never_overwrites_inputs_or_merges_outputs(published, tmp_path):
    _, folder = published
    src = tmp_path / "in"
    src.mkdir()
    lr_image().save(src / "pic.png")
    before = (src / "pic.png").read_bytes()
    args = ["--model", str(folder), "--steps", "1"]
    with pytest.raises(SystemExit):  # output folder = input folder: pic.png would replace itself
        upscale.main([str(src), str(src), *args])
    with pytest.raises(SystemExit):  # output file = input file
        upscale.main([str(src / "pic.png"), str(src / "pic.png"), *args])
    assert (src / "pic.png").read_bytes() == before
    lr_image(seed=2).save(src / "pic.jpg")
    with pytest.raises(SystemExit):  # pic.jpg and pic.png both -> out/pic.png
        upscale.main([str(src), str(tmp_path / "out"), *args])
    assert not (tmp_path / "out").exists()
    (src / "pic.jpg").unlink()
    out = tmp_path / "sr.png"
    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit):
        upscale.main([str(src / "pic.png"), str(out), *args])
    assert out.read_bytes() == b"keep me"
    assert upscale.main([str(src / "pic.png"), str(out), *args, "--overwrite"]) == 0
    assert Image.open(out).size == (36, 28)


def test_a_damaged_published_model_is_refused_not_used(published, tmp_path, capsys):
    _, folder = published
    assert "unet/diffusion_pytorch_model.safetensors" in json.loads((folder / "checksums.json").read_text())
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is damaged: .*diffusion_pytorch_model.safetensors does not match"):
        BiDiffSRPipeline.from_pretrained(folder)
    src = tmp_path / "lr.png"
    lr_image().save(src)
    assert upscale.main([str(src), str(tmp_path / "sr.png"), "--model", str(folder)]) == 1
    assert "is damaged" in capsys.readouterr().err and not (tmp_path / "sr.png").exists()


def test_the_generic_diffusers_call_loads_a_published_folder(published):
    from diffusers import DiffusionPipeline

    _, folder = published
    with pytest.raises(ValueError, match="trust_remote_code"):  # diffusers' rule for folders that carry code
        DiffusionPipeline.from_pretrained(folder)
    generic = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    ours = BiDiffSRPipeline.from_pretrained(folder)
    assert isinstance(generic, BiDiffSRPipeline) and isinstance(generic.unet, BiDiffSRUNet)
    assert isinstance(generic.scheduler, DDPMProcess) and generic.config.scale == 4
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(generic(x, num_inference_steps=2, seed=4, output_type="pt").images[0],
                       ours(x, num_inference_steps=2, seed=4, output_type="pt").images[0])
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is damaged"):  # the generic path checks the checksums too
        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)


def test_model_card_metadata(published):
    from huggingface_hub import ModelCard

    _, folder = published
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-to-image" and "psnr" in data["metrics"]
    results = {m["type"]: m["value"] for r in data["model-index"][0]["results"] for m in r["metrics"]}
    assert results == {"psnr": 24.5, "ssim": 0.69}
    text = card.text
    for needle in ("DDPMProcess", "50 deterministic sampling steps", PACKED_NAME, "trust_remote_code=True",
                   "zhengchen1999/BI-DiffSR", "Xingyu-Zheng/BiDM", "Kai-Liu001/BiMaCoSR"):
        assert needle in text, needle


def test_call_conventions_and_validation(published):
    import numpy as np

    _, folder = published
    pipe = BiDiffSRPipeline.from_pretrained(folder)
    image = lr_image()
    pil = np.array(pipe(image, num_inference_steps=2, seed=1).images[0])
    from_array = pipe(np.array(image), num_inference_steps=2, seed=1, output_type="np").images
    assert from_array.shape == (1, 28, 36, 3) and from_array.dtype == np.float32
    assert np.array_equal((from_array[0] * 255).round().astype(np.uint8), pil)
    (images,) = pipe([image, image], num_inference_steps=2, seed=1, output_type="pt", return_dict=False)
    assert len(images) == 2 and images[0].shape == (3, 28, 36)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
            pipe(image, num_inference_steps=bad)
    with pytest.raises(ValueError, match="output_type"):
        pipe(image, output_type="latent")
    with pytest.raises(ValueError, match="tile_size"):
        pipe(image, tile_size=10)
    with pytest.raises(TypeError, match="image must be"):
        pipe(42)
    with pytest.raises(ValueError, match="cannot read image nowhere.png"):  # a path is an image, if it is one
        pipe("nowhere.png")


def test_a_swapped_scheduler_is_used_and_a_foreign_one_refused(published):
    from diffusers import DDIMScheduler

    _, folder = published
    pipe = BiDiffSRPipeline.from_pretrained(folder)
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(3))
    data_clip = pipe(x, num_inference_steps=3, seed=4, output_type="pt").images[0]
    pipe.scheduler = DDPMProcess(clip_sample="none")
    assert not torch.equal(pipe(x, num_inference_steps=3, seed=4, output_type="pt").images[0], data_clip)
    pipe.scheduler = DDIMScheduler()
    with pytest.raises(TypeError, match="must be a BiDistill diffusion process"):
        pipe(x)


def test_progress_counts_every_network_evaluation_and_bf16_runs(published):
    _, folder = published
    pipe = BiDiffSRPipeline.from_pretrained(folder)
    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    pipe.progress_bar = Bar
    pipe(lr_image(12, 12), num_inference_steps=3, seed=0, tile_size=16, tile_overlap=4)  # 16 tiles, one by one on CPU
    assert tile_batch_for(torch.device("cpu")) == 1 and tile_batch_for(torch.device("cuda")) == 8
    assert bars[-1].total == bars[-1].n == 16 * 3
    half = BiDiffSRPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert next(half.unet.parameters()).dtype == torch.bfloat16
    out = half(lr_image(), num_inference_steps=2, seed=1, output_type="pt").images[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1


def test_cards_carry_the_teachers_licence_and_no_local_paths_and_files_follow_the_umask(tiny_config, tmp_path):
    student = BiDiffSRUNet(**tiny_config).eval()
    metrics = {"scale": 4, "num_images": 1, "num_inference_steps": 2, "seed": 10, "metrics": ["psnr", "ssim"],
               "mean": {"student": {"psnr": 24.5, "ssim": 0.69}}}
    recipe = {"teacher": {"path": "/home/someone/private/teacher"}, "stages": [{"type": "one_step"}],
              "data": {"train": "/home/someone/private/DF2K/HR", "val": "/data/Set5", "degradation": "realesrgan"}}
    old = os.umask(0o022)
    try:
        folder = write_model_folder(student, DDPMProcess(), 4, tmp_path / "publish", metrics=metrics, recipe=recipe,
                                    license="cc-by-nc-sa-4.0")
    finally:
        os.umask(old)
    card = (folder / "README.md").read_text()
    assert "license: cc-by-nc-sa-4.0" in card and "carries that licence" in card
    assert "/home/someone" not in card and "`HR`" in card and "Real-ESRGAN" in card
    assert "lpips" not in card.split("---")[1]  # the card's metadata lists only the metrics computed
    modes = {oct(p.stat().st_mode & 0o777) for p in folder.rglob("*") if p.is_file()}
    assert modes == {"0o644"}  # safetensors writes 0600: made what the umask gives every other file
    other = write_model_folder(student, DDPMProcess(), 4, tmp_path / "other",
                               license="other:S-Lab License 1.0 (non-commercial)")
    card = (other / "README.md").read_text()
    assert "license: other" in card and "license_name: S-Lab License 1.0 (non-commercial)" in card


def test_a_student_holding_a_nan_is_never_published(tiny_config, tmp_path):
    student = BiDiffSRUNet(**tiny_config).eval()
    with torch.no_grad():
        next(student.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(PublishError, match="NaN or infinite weights"):
        write_model_folder(student, DDPMProcess(), 4, tmp_path / "publish")
    assert not (tmp_path / "publish").exists()


def test_a_model_card_edited_on_the_hub_still_loads(published):
    _, folder = published
    (folder / "README.md").write_text("# my own words\n")
    assert BiDiffSRPipeline.from_pretrained(folder).config.scale == 4


def test_save_pretrained_writes_a_folder_both_loaders_read_and_calls_take_diffusers_keywords(published, tmp_path):
    _, folder = published
    pipe = BiDiffSRPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.save_pretrained(tmp_path / "saved")  # diffusers' push_to_hub saves through this too
    for loader in ("pipeline_bidiffsr.py", "unet/bidiffsr_unet.py", "scheduler/bidiffsr_process.py"):
        assert (tmp_path / "saved" / loader).is_file()
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_bidiffsr", "BiDiffSRPipeline"]
    with pytest.warns(UserWarning, match="no checksums.json"):
        again = BiDiffSRPipeline.from_pretrained(tmp_path / "saved")
    lr_image(seed=3).save(tmp_path / "lr.png")
    batch = again([str(tmp_path / "lr.png"), lr_image(seed=3)], num_inference_steps=2, seed=0, output_type="pt").images
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, 3, 28, 36)  # a path is an image; "pt" is batched
    for keyword in ({"variant": "fp16"}, {"device_map": "auto"}, {"use_safetensors": False}, {"low_cpu": True}):
        with pytest.raises(TypeError, match="does not take"):
            BiDiffSRPipeline.from_pretrained(folder, **keyword)


def test_push_passes_branch_message_pr_and_token_to_the_hub(published, monkeypatch, capsys):
    from pipeline import cli, publish

    calls = []

    class RecordingApi:
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id))

        def create_branch(self, repo_id, branch, **kwargs):
            calls.append(("create_branch", branch))

        def upload_folder(self, **kwargs):
            calls.append(("upload", kwargs["revision"], kwargs["commit_message"], kwargs["create_pr"]))
            return type("Info", (), {"commit_url": "http://hub/c", "pr_url": "http://hub/pr/1" if kwargs["create_pr"]
                                     else None})()

    monkeypatch.setattr(publish, "HfApi", RecordingApi)
    _, folder = published
    assert cli.main(["push", str(folder), "me/m", "--revision", "v2", "--commit-message", "second try",
                     "--token", "hf_x"]) == 0
    assert calls == [("token", "hf_x"), ("create_repo", "me/m"), ("create_branch", "v2"),
                     ("upload", "v2", "second try", False)]
    calls.clear()
    assert cli.main(["push", str(folder), "me/m", "--create-pr", "--token", "hf_x"]) == 0
    assert calls[-1] == ("upload", None, "Upload BiDistill student", True)
    assert "http://hub/pr/1" in capsys.readouterr().out


FETCH = """
import sys
from pipeline.fetch_data import main
sys.exit(main(sys.argv[1:]))
"""


def test_fetch_data_downloads_a_datasets_images_whole_and_only_them(tmp_path):
    import io

    def png(seed):
        buffer = io.BytesIO()
        lr_image(8, 8, seed).save(buffer, "PNG")
        return buffer.getvalue()

    with FakeHub() as hub:
        hub.datasets["bench/sr"] = {"Set5/HR/baby.png": png(0), "Set5/HR/bird.png": png(1),
                                    "Set5/LR_bicubic/X4/babyx4.png": png(2), "Set14/HR/comic.png": png(3),
                                    "README.md": b"# benchmarks", "data.parquet": b"not wanted"}
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT),
                   HF_HUB_DISABLE_TELEMETRY="1")

        def fetch(*argv):
            return subprocess.run([sys.executable, "-c", FETCH, *argv], env=env, capture_output=True, text=True,
                                  timeout=120)

        done = fetch("bench/sr", "--out", str(tmp_path / "data"), "--subfolder", "Set5")
        assert done.returncode == 0, done.stderr
        files = sorted(str(p.relative_to(tmp_path / "data")) for p in (tmp_path / "data").rglob("*") if p.is_file())
        assert files == ["Set5/HR/baby.png", "Set5/HR/bird.png", "Set5/LR_bicubic/X4/babyx4.png"]
        assert f"{tmp_path / 'data' / 'Set5' / 'HR'}  (2 images)" in done.stdout
        again = fetch("bench/sr", "--out", str(tmp_path / "data"))  # never mixed into a folder with files
        assert again.returncode == 2 and "already exists and is not empty" in again.stderr
        missing = fetch("bench/none", "--out", str(tmp_path / "other"))
        assert missing.returncode == 1 and "cannot fetch bench/none" in missing.stderr
        assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other*"))


def test_folders_saved_under_the_earlier_class_spelling_still_load(published, tiny_config, tmp_path, make_recipe):
    """Folders saved before the student class was spelled BiDiffSRUNet name BIDiffSRUNet in model_index.json, the
    unet config and the loader file: a folder written now, respelled so, loads every way a user loads one."""
    from diffusers import DiffusionPipeline

    from pipeline.preflight import load_checked
    from students.checksums import write_checksums
    from teachers import Teacher, load_teacher

    student, folder = published
    teacher_folder = tmp_path / "teacher"
    Teacher(BiDiffSRUNet(**BiDiffSRUNet.twin_config(tiny_config)), DDPMProcess()).save_pretrained(teacher_folder)
    for saved in (folder, teacher_folder):
        for file in [saved / "model_index.json", saved / "unet" / "config.json", *saved.glob("unet/*.py")]:
            file.write_text(file.read_text().replace("BiDiffSRUNet", "BIDiffSRUNet"))
    write_checksums(folder)
    assert json.loads((folder / "model_index.json").read_text())["unet"] == ["bidiffsr_unet", "BIDiffSRUNet"]
    assert json.loads((teacher_folder / "unet" / "config.json").read_text())["_class_name"] == "BIDiffSRUNet"

    loaded = BiDiffSRPipeline.from_pretrained(folder).unet
    assert type(loaded) is BiDiffSRUNet
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), student.state_dict().values()))
    generic = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(generic.unet).__name__ == "BiDiffSRUNet"
    assert type(load_teacher(teacher_folder).unet) is BiDiffSRUNet
    recipe = make_recipe(teacher={"path": teacher_folder}, student={"init_from_teacher": True},
                         stages=[{"type": "feature_distill", "steps": 1}])  # a twin saved then is still a twin
    assert load_checked(recipe).student_config["base_channels"] == 16
