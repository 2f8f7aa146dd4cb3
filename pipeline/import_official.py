"""The import command's earlier path, kept so that `python -m pipeline.import_official` and imports from here keep
working: the command is `pipeline.importers.command` (`python -m pipeline.importers`)."""

import sys

from pipeline.importers import CheckpointError, read_checkpoint  # noqa: F401
from pipeline.importers.bidiffsr import bidiffsr_config, convert_bidiffsr, import_bidiffsr  # noqa: F401
from pipeline.importers.command import main

if __name__ == "__main__":
    sys.exit(main())
