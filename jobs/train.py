"""Ray job entrypoint for decoder training; the same options as `adain train`.

ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when not pip-installed

from pipeline.cli import command

if __name__ == "__main__":
    sys.exit(command(["train", *sys.argv[1:]]))
