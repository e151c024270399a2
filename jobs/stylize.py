"""Ray job entrypoint for the stylization job; the same options as `adain stylize`.

ray job submit --working-dir . -- python jobs/stylize.py --config jobs/configs/stylize.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when not pip-installed

from pipeline.cli import command

if __name__ == "__main__":
    sys.exit(command(["stylize", *sys.argv[1:]]))
