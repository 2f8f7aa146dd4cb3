"""`python -m pipeline.importers KIND CHECKPOINT --out DIR`: the import command (`pipeline.importers.command`)."""

import sys

from pipeline.importers.command import main

sys.exit(main())
