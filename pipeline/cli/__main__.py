"""`python -m pipeline.cli`: the `adain` command."""

import sys

from pipeline.cli import command

sys.exit(command())
