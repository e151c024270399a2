"""Ray job entrypoint for dataset augmentation; the same options as `adain augment`.

ray job submit --working-dir . -- python jobs/augment.py --config jobs/configs/augment.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when not pip-installed

from pipeline.cli import command

if __name__ == "__main__":
    sys.exit(command(["augment", *sys.argv[1:]]))
