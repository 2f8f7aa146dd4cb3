"""`bidistill fetch-data REPO --out DIR`: benchmark or training images (Set5, Set14, DF2K, ...) from a Hugging Face
dataset repository into a local folder for the recipes' `data.val`, `data.val_lr` and `data.train` keys.

Any dataset repository that holds image folders will do (for instance one with `Set5/HR/*.png` and
`Set5/LR_bicubic/X4/*x4.png`, the layout the paper recipes expect); only image files are downloaded, the folder is
written whole (an interrupted download leaves nothing under DIR), and a DIR that already holds files is refused so a
user's folder is never mixed into. The command prints each image folder it got, ready to paste into a recipe.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pipeline.atomic import folder_written_whole, partial_sibling
from pipeline.image_files import IMAGE_SUFFIXES


def fetch(repo_id: str, out: str | Path, revision: str | None = None, subfolder: str = "",
          token: str | None = None) -> list[Path]:
    """Download the image files of dataset `repo_id` (under `subfolder` if given) into `out`; returns the folders
    holding images. A repository without images is a ValueError and writes nothing."""
    from huggingface_hub import snapshot_download

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not empty; choose a new folder")
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    patterns = [f"{prefix}**{s}" for suffix in IMAGE_SUFFIXES for s in (suffix, suffix.upper())]
    try:
        with folder_written_whole(out) as tmp:
            snapshot_download(repo_id, repo_type="dataset", revision=revision, local_dir=tmp, allow_patterns=patterns,
                              token=token)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping for local_dir downloads
            folders = sorted({p.parent.relative_to(tmp) for p in tmp.rglob("*")
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES})
            if not folders:
                raise ValueError(f"the dataset {repo_id} holds no images{f' under {subfolder}' if subfolder else ''} "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    except BaseException:
        shutil.rmtree(partial_sibling(out), ignore_errors=True)  # a failed download leaves nothing behind
        raise
    return [out / folder for folder in folders]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bidistill fetch-data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("repo_id", help="a Hub dataset repository, owner/name")
    parser.add_argument("--out", required=True, help="a new (or empty) local folder")
    parser.add_argument("--subfolder", default="", help="only the images under this folder of the repository")
    parser.add_argument("--revision", default=None, help="a branch, tag or commit (default: main)")
    parser.add_argument("--token", default=None, help="for a private repository (default: the stored login)")
    args = parser.parse_args(argv)
    try:
        folders = fetch(args.repo_id, args.out, args.revision, args.subfolder, args.token)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # not found, offline, refused token: huggingface_hub's many error types end alike
        print(f"error: cannot fetch {args.repo_id}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for folder in folders:
        count = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        print(f"{folder}  ({count} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
