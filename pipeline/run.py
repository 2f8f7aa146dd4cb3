"""Entry point: train, evaluate and publish what a recipe describes.

    accelerate launch pipeline/run.py recipes/bidiffsr_x4.toml [--set stages.0.steps=1000 --set run.output_dir=out]
    python pipeline/run.py recipes/quickstart.toml          # one process, no launcher needed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.recipe import RecipeError, load_recipe  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline/run.py", description="Run a BiDistill recipe.")
    parser.add_argument("recipe", help="a TOML recipe (see recipes/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set stages.0.steps=10 (repeatable)")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.set)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from pipeline.publish import PublishError
    from pipeline.run_folder import RunFolderError
    from pipeline.trainer import NonFiniteLoss, Trainer

    try:
        Trainer(recipe).run()
    except RunFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (PublishError, NonFiniteLoss) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
