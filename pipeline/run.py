"""Entry point: train, evaluate and publish what a recipe describes.

    accelerate launch pipeline/run.py recipes/bidiffsr_x4.toml [--set stages.0.steps=1000 --set run.output_dir=out]
    python pipeline/run.py recipes/quickstart.toml          # one process, no launcher needed
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.allocator import keep_freed_memory  # noqa: E402
from pipeline.recipe import RecipeError, load_recipe  # noqa: E402
from recipes import shipped_recipe  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline/run.py", description="Run a BiDistill recipe: train its stages, "
                                     "evaluate, publish.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("recipe", help="a TOML recipe file, or the name of a shipped one (quickstart, tiny, "
                        "bidiffsr_x4, ...: recipes/); pipeline/recipe.py lists every key")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set stages.0.steps=10 (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved recipe (defaults filled in, overrides applied) as JSON and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the recipe and the output folder, print what would run, and exit without "
                             "writing anything")
    args = parser.parse_args(argv)
    keep_freed_memory()
    if not Path(args.recipe).exists() and shipped_recipe(args.recipe) is not None:
        args.recipe = str(shipped_recipe(args.recipe))  # an installed package's own recipes, by name
    try:
        recipe = load_recipe(args.recipe, args.set)  # keys and values only: printing needs no data
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    from pipeline.data import DataError
    from pipeline.preflight import preflight
    from pipeline.publish import PublishError
    from pipeline.run_folder import RunFolder, RunFolderError
    from pipeline.trainer import NonFiniteLoss, Trainer

    try:
        try:
            checked = preflight(recipe)
        except RecipeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        trainer = Trainer(recipe, checked=checked)
        if args.dry_run:
            folder = RunFolder(trainer.out)
            folder.check()
            if folder.holder():
                raise RunFolderError(f"another run (pid {folder.holder()}) is using {trainer.out}: a real run would "
                                     "stop here; wait for it to finish or choose another run.output_dir")
            trainer.store.check_earlier_work()
            trainer.print_summary()
            return 0
        trainer.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing half-written was kept; run the same command again to resume from the last "
              f"checkpoint in {recipe.run.output_dir}", file=sys.stderr)
        return 130
    except (RunFolderError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (PublishError, NonFiniteLoss) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a read-only or full disk: what was written whole stays, nothing half-written does
        print(f"error: {err.filename or recipe.run.output_dir}: {err.strerror or err}; what earlier steps saved is "
              "intact: fix this and run the same command again to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
