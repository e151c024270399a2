"""The benchmark harness keeps working: one tiny run, in this session's Ray."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def test_throughput_harness_runs_on_tiny_inputs(
    ray_cluster: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """All three measurements run and the last line is the speedup, as the README promises."""
    argv = [str(HARNESS), "--images", "4", "--size", "32", "--batch-size", "2", "--precision", "bf16"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(HARNESS), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    table = "\n".join(lines)
    for row in ("baseline", "model only", "job"):
        assert re.search(rf"^{row}.*\d+\.\d+\s+\d+\.\d+", table, re.MULTILINE), table
    assert re.fullmatch(r"speedup \d+\.\d\d", lines[-1]), lines[-1]
