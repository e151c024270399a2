"""`python -m pipeline.cli`: the `adain` command."""

import sys

from pipeline.cli import main

sys.exit(main())
