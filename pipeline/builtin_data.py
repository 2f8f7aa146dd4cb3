"""Bundled training data for the quickstart: real photographs that ship inside scikit-image, written out as image
folders so they go through exactly the same `datasets` path as any user's data. No download is involved."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

# Files bundled in skimage/data (not fetched): photographs and natural textures.
SKIMAGE_TRAIN = ["astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "motorcycle_left.png", "ihc.png",
                 "camera.png", "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png", "retina.jpg"]
SKIMAGE_VAL = ["chelsea.png", "coffee.png"]
BUILTINS = ("skimage",)
MAX_SIDE = 512  # the largest photos (retina, hubble) are shrunk so a CPU run spends its time training, not decoding


def export_skimage(dest: str | Path) -> tuple[Path, Path]:
    """Write the scikit-image photos to dest/train and dest/val (idempotent); returns both folders."""
    import skimage

    source = Path(skimage.__file__).parent / "data"
    dest = Path(dest)
    folders = []
    for split, names in (("train", SKIMAGE_TRAIN), ("val", SKIMAGE_VAL)):
        folder = dest / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = folder / f"{Path(name).stem}.png"
            if not target.exists():
                tmp = target.with_name(f".{target.name}.partial")
                image = Image.open(source / name).convert("RGB")
                if max(image.size) > MAX_SIDE:
                    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
                image.save(tmp, format="PNG")
                tmp.replace(target)
        folders.append(folder)
    return folders[0], folders[1]
