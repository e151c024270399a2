"""benchmarks/gpu.sh gathers the groups of wheels carried one per call, joins the wheel that was cut
in two (as benchmarks/gpu_wheels.sh cuts Ray's) and checks every file before installing anything."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"


def gpu_sh(action: str, carried: Path, wheels: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ADAIN_CARRIED": str(carried), "ADAIN_WHEELS": str(wheels)}
    return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True, text=True)


def test_groups_carried_in_turn_are_joined_and_checked(tmp_path: Path) -> None:
    big = np.random.default_rng(0).bytes(300_001)
    small = b"a small wheel"
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  ./{n}\n" for n, d in (("big.whl", big), ("small.whl", small)))
    groups = {"1": {"big.whl.part01": big[150_001:], "small.whl": small}, "2": {"big.whl.part00": big[:150_001]}}
    wheels = tmp_path / "gathered"
    for n, files in groups.items():
        carried = tmp_path / f"call{n}"  # each call carries one group; the others are not there
        for name, data in {**files, "SHA256SUMS": sums.encode()}.items():
            (carried / n).mkdir(parents=True, exist_ok=True)
            (carried / n / name).write_bytes(data)
        if n == "1":
            assert gpu_sh("stash", carried, wheels).returncode == 0
            missing = gpu_sh("check", carried, wheels)
            assert missing.returncode == 1 and "carry every group" in missing.stdout
    assert gpu_sh("check", carried, wheels).returncode == 0
    assert (wheels / "big.whl").read_bytes() == big
    (carried / "2" / "big.whl.part00").write_bytes(b"\0" + big[1:150_001])  # a part damaged on the way
    assert gpu_sh("check", carried, wheels).returncode == 1
    assert gpu_sh("check", tmp_path / "nothing", wheels).returncode == 1  # nothing carried: nothing to do
