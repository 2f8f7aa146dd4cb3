"""Data: aligned patches, augmentation, deterministic sampling, odd inputs, validation folders (data.md)."""

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.data import (PatchDataset, StepBatchSampler, augment, crop_pair, load_hr_dataset, load_validation,
                           make_pairs)
from pipeline.resize import upsample_cond


def test_condition_patch_equals_crop_of_full_upsampling():
    lr = torch.rand(3, 20, 17)
    hr = torch.rand(3, 80, 68)
    full = upsample_cond(lr[None], 4)[0]  # unclamped: a process clamps it if its convention says so
    for top, left in [(0, 0), (5, 3), (12, 9), (8, 0)]:
        hr_p, cond, lr_p = crop_pair(hr, lr, top, left, 32, 4)
        torch.testing.assert_close(cond, full[:, top * 4 : top * 4 + 32, left * 4 : left * 4 + 32])
        assert torch.equal(hr_p, hr[:, top * 4 : top * 4 + 32, left * 4 : left * 4 + 32])
        assert torch.equal(lr_p, lr[:, top : top + 8, left : left + 8])


def test_augment_is_joint():
    a = torch.arange(12.0).reshape(1, 3, 4)
    b = a.clone()
    for flags in [(True, False, False), (False, True, True), (True, True, True)]:
        x, y = augment([a, b], *flags)
        assert torch.equal(x, y)
    assert augment([a], False, False, True)[0].shape == (1, 4, 3)


def make_folder(path, sizes_modes):
    """Random-noise PNGs of the given (width, height) and PIL mode ("L", "RGB", "RGBA")."""
    path.mkdir(parents=True, exist_ok=True)
    for i, (size, mode) in enumerate(sizes_modes):
        pixels = torch.randint(0, 256, (size[0] * size[1] * len(mode),), dtype=torch.uint8).numpy().tobytes()
        Image.frombytes(mode, size, pixels).save(path / f"img{i}.png")
    return path


def test_grayscale_rgba_odd_sizes_and_small_images(tmp_path):
    folder = make_folder(tmp_path / "hr", [((37, 41), "L"), ((50, 45), "RGBA"), ((40, 40), "RGB"), ((20, 50), "RGB")])
    ds = load_hr_dataset(str(folder))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = make_pairs(ds, 4, 32, source=str(folder))
    assert len(pairs) == 3
    assert any("img3.png" in str(w.message) and "smaller than the 32px patch" in str(w.message) for w in caught)
    data = PatchDataset(pairs, 32, 4, seed=1)
    for i in range(6):
        sample = data[i]
        assert sample["hr"].shape == sample["cond"].shape == (3, 32, 32) and sample["lr"].shape == (3, 8, 8)
        assert 0 <= sample["hr"].min() and sample["hr"].max() <= 1


def test_sampling_is_deterministic_per_index(tmp_path):
    folder = make_folder(tmp_path / "hr", [((64, 48), "RGB"), ((48, 64), "RGB"), ((80, 80), "RGB")])
    pairs = make_pairs(load_hr_dataset(str(folder)), 4, 32)
    a, b = PatchDataset(pairs, 32, 4, seed=5), PatchDataset(pairs, 32, 4, seed=5)
    for i in (0, 4, 11):
        assert all(torch.equal(a[i][k], b[i][k]) for k in ("hr", "cond", "lr"))
    assert not torch.equal(a[0]["hr"], PatchDataset(pairs, 32, 4, seed=6)[0]["hr"])
    epoch0 = {int(a._permutation(0)[j]) for j in range(3)}
    assert epoch0 == {0, 1, 2}  # each epoch visits every image once


def test_step_batches_split_processes_and_resume():
    r0, r1 = iter(StepBatchSampler(2, 0, 2)), iter(StepBatchSampler(2, 1, 2))
    first = [next(r0), next(r1), next(r0), next(r1)]
    assert first == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert next(iter(StepBatchSampler(2, 0, 2, start_micro=1))) == [4, 5]


def test_image_column_error(tmp_path):
    folder = make_folder(tmp_path / "hr", [((40, 40), "RGB")])
    with pytest.raises(ValueError, match="no column 'pixels'"):
        load_hr_dataset(str(folder), image_column="pixels")


def test_validation_folder_checks(tmp_path):
    hr = make_folder(tmp_path / "hr", [((42, 30), "RGB")])
    images = load_validation(hr, 4)
    assert images[0].hr.shape == (3, 28, 40) and images[0].lr.shape == (3, 7, 10)
    lr = tmp_path / "lr"
    lr.mkdir()
    Image.new("RGB", (9, 7)).save(lr / "img0x4.png")
    with pytest.raises(ValueError, match=r"img0x4.png is 9x7, which is not the x4 LR"):
        load_validation(hr, 4, lr)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_validation(empty, 4)


@pytest.mark.parametrize("mode", ["I;16", "I", "P", "LA", "CMYK", "RGBA", "L"])
def test_every_pillow_mode_becomes_the_right_rgb(mode):
    """16-bit images are scaled, not clipped to white; the others go through Pillow's conversion."""
    import numpy as np
    from PIL import Image

    from pipeline.data import to_rgb8

    gray8 = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    if mode in ("I;16", "I"):
        image = Image.fromarray((gray8.astype(np.uint16) * 257))
        image = image if mode == "I;16" else image.convert("I")
        expected = np.repeat(gray8[..., None], 3, axis=2)
    else:
        image = Image.fromarray(gray8).convert(mode)
        expected = np.array(image.convert("RGB"))
    out = to_rgb8(image)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert np.array_equal(out, expected)
    if mode not in ("P", "CMYK"):  # those two quantise through their own palettes / ink model
        assert out.max() == 252  # not saturated


def test_floating_point_images_are_refused_clearly():
    from PIL import Image

    from pipeline.data import to_rgb8

    with pytest.raises(ValueError, match="mode F"):
        to_rgb8(Image.new("F", (4, 4)))


def test_lr_files_must_match_their_hr_names(tmp_path):
    hr = make_folder(tmp_path / "hr", [((40, 32), "RGB")])
    lr = tmp_path / "lr"
    lr.mkdir()
    Image.new("RGB", (10, 8)).save(lr / "img0_x4.png")  # another naming scheme: not silently replaced by bicubic
    with pytest.raises(ValueError, match=r"has no img0x4.png, the x4 LR of .*img0.png \(it holds img0_x4.png\)"):
        load_validation(hr, 4, lr)
    Image.new("RGB", (10, 8)).save(lr / "img0x4.png")
    assert load_validation(hr, 4, lr)[0].lr.abs().sum() == 0  # the given LR file is used


def test_the_lr_cache_built_in_parallel_equals_the_serial_one(tmp_path):
    folder = make_folder(tmp_path / "hr", [((40 + i % 3 * 4, 36), "RGB") for i in range(32)])
    ds = load_hr_dataset(str(folder))
    serial = make_pairs(ds, 4, 32, num_proc=1)
    parallel = make_pairs(ds, 4, 32, num_proc=2)
    assert serial["name"] == parallel["name"] and len(serial) == 32
    for i in (0, 17, 31):
        assert serial[i]["hr"].tobytes() == parallel[i]["hr"].tobytes()
        assert serial[i]["lr"].tobytes() == parallel[i]["lr"].tobytes()


def test_training_folders_with_brackets_and_a_stray_metadata_file_load(tmp_path):
    """datasets reads data_dir as a pattern and a metadata.jsonl beside the images as labels; the images are named
    one by one instead."""
    folder = tmp_path / "photos [2024]"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(folder / "a.png")
    Image.new("RGB", (40, 40), "white").save(folder / "sub" / "b.png")
    (folder / "metadata.jsonl").write_text("{not json\n")
    ds = load_hr_dataset(str(folder))
    assert sorted(Path(cell["path"]).name for cell in ds["image"]) == ["a.png", "b.png"]


def test_a_named_pipe_is_not_an_image(tmp_path):
    import os

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "x.png")  # reading it would block forever
    from pipeline.data import image_files, training_image_files

    assert [p.name for p in image_files(tmp_path)] == ["a.png"]
    assert [p.name for p in training_image_files(tmp_path)] == ["a.png"]
