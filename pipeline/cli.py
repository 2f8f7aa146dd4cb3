"""The `bidistill` command: one entry point for training, evaluation, inference, publishing and accounting.

    bidistill train recipes/quickstart.toml [--set KEY=VALUE] [--print-config] [--dry-run]
    bidistill evaluate --student runs/x/student --val ../shared/data/Set5 --scale 4
    bidistill upscale lr.png sr.png --model runs/quickstart/publish
    bidistill import bidiffsr BI_DiffSR_x4.pth --config test_BI_DiffSR_x4.yml --out imported/bidiffsr_x4
    bidistill push runs/quickstart/publish owner/name [--private] [--revision B] [--commit-message M] [--create-pr]
    bidistill fetch-data owner/sr-benchmarks --out data/benchmarks [--subfolder Set5]
    bidistill complexity

Each subcommand is the module it names (`bidistill train` = `python pipeline/run.py`, `bidistill evaluate` =
`python -m pipeline.evaluate`, ...); `bidistill SUBCOMMAND --help` lists its options with their defaults.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {  # subcommand -> ("module:function" taking argv, what it does)
    "train": ("pipeline.run:main", "train, evaluate and publish what a recipe describes"),
    "evaluate": ("pipeline.evaluate:main", "score a student and/or teacher against bicubic on a benchmark folder"),
    "upscale": ("pipeline.upscale:main", "super-resolve images with a published student"),
    "import": ("pipeline.importers.command:main", "convert a released BI-DiffSR, SR3 or ResShift/SinSR checkpoint"),
    "push": ("pipeline.cli:push", "upload a published folder to the Hugging Face Hub"),
    "fetch-data": ("pipeline.fetch_data:main", "download benchmark / training images from a Hub dataset repository"),
    "complexity": ("pipeline.complexity:main", "Params / OPs of students by the papers' counting rule"),
}


def push(argv: list[str] | None = None) -> int:
    from pipeline.publish import PublishError, push_folder

    parser = argparse.ArgumentParser(prog="bidistill push", description=COMMANDS["push"][1],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("folder", help="a published folder (run.output_dir/publish)")
    parser.add_argument("repo_id", help="owner/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="the branch to push to (created if absent; default: main)")
    parser.add_argument("--commit-message", default="Upload BiDistill student")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--token", default=None, help="a Hugging Face token (default: the stored login or $HF_TOKEN)")
    args = parser.parse_args(argv)
    try:
        print(push_folder(args.folder, args.repo_id, private=args.private, token=args.token, revision=args.revision,
                          commit_message=args.commit_message, create_pr=args.create_pr))
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\nsubcommands:")
        for name, (_, what) in COMMANDS.items():
            print(f"  {name:<11} {what}")
        print("\n`bidistill SUBCOMMAND --help` for its options.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown subcommand {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = COMMANDS[name][0].split(":")
    try:
        return getattr(importlib.import_module(module), function)(rest) or 0
    except SystemExit as exit:  # argparse: --help (0) and usage errors (2)
        return exit.code if isinstance(exit.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
