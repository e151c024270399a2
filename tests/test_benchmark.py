"""The benchmark harness keeps working: one tiny run, in this session's Ray."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_harness(
    name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    """Run benchmarks/NAME as its command line would, in this process; what it printed."""
    harness = BENCHMARKS / name
    monkeypatch.setattr(sys, "argv", [str(harness), *argv])
    runpy.run_path(str(harness), run_name="__main__")
    return capsys.readouterr().out


def test_throughput_harness_runs_on_tiny_inputs(
    ray_cluster: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """All three measurements run and the last line is the speedup, as the README promises."""
    argv = ["--images", "4", "--distinct", "2", "--size", "32", "--batch-size", "2", "--precision", "bf16"]
    lines = run_harness("throughput.py", argv, monkeypatch, capsys).strip().splitlines()
    table = "\n".join(lines)
    for row in ("baseline", "model only", "job"):
        assert re.search(rf"^{row}.*\d+\.\d+\s+\d+\.\d+", table, re.MULTILINE), table
    assert re.fullmatch(r"speedup \d+\.\d\d", lines[-1]), lines[-1]
    assert re.search(r"^model only, images/s: \d+\.\d\d before the job and \d+\.\d\d after$", table, re.MULTILINE)
    in_job_line = r"^the model calls inside the job: (\d+\.\d\d) images/s; the job, start to end, (\d+)% of that$"
    in_job = re.search(in_job_line, table, re.MULTILINE)
    assert in_job and float(in_job.group(1)) > 0 and 0 <= int(in_job.group(2)) <= 100, table
    psnr = re.search(r"^bf16 outputs vs fp32: PSNR (\d+\.\d) dB$", table, re.MULTILINE)
    assert psnr and float(psnr.group(1)) >= 30.0, table


def test_training_mode_runs_on_tiny_inputs(
    ray_cluster: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--train measures the reference loop and one `adain train` worker, speedup last."""
    argv = ["--train", "--images", "4", "--size", "32", "--batch-size", "2", "--steps", "2"]
    lines = run_harness("throughput.py", argv, monkeypatch, capsys).strip().splitlines()
    table = "\n".join(lines)
    for row in ("reference loop", "adain train, 1 worker"):
        assert re.search(rf"^{row}.*\s\d+\.\d\d$", table, re.MULTILINE), table
    assert re.fullmatch(r"speedup \d+\.\d\d", lines[-1]), lines[-1]


def test_arena_harness_runs(
    ray_cluster: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/arena.py times the model in the driver and in both actors, each against the driver's."""
    argv = ["--size", "32", "--batch-size", "1", "--passes", "1", "--rounds", "1"]
    out = run_harness("arena.py", argv, monkeypatch, capsys)
    for row in ("driver", "actor", "one arena"):
        assert re.search(rf"^{row} +ms/image +\d+ +median +\d+\.\d +\d+\.\d\dx the driver's$", out, re.MULTILINE), out


def test_storage_list_mode_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/storage.py --list-entries: a list file read by Ray Data, an index of its outputs, a block planned."""
    out = run_harness("storage.py", ["--list-entries", "3000"], monkeypatch, capsys)
    assert "inputs: 3,000" in out and "rows: 3,000" in out and "index: 3,000 entries" in out, out
    assert re.search(r"planning one block against it: (\d+) rows \(\1 done\)", out), out


def test_scale_report_mode_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/scale.py --report-rows: a generated manifest; `adain report` and `--errors` in fresh processes."""
    out = run_harness("scale.py", ["--report-rows", "2000", "--work", str(tmp_path)], monkeypatch, capsys)
    assert "2,000 rows: 2 parts" in out, out
    for command in ("report", "report --errors"):
        assert re.search(rf"^  this tree: adain {command}: \d+\.\d s, peak RSS \d", out, re.MULTILINE), out


def test_actors_harness_alternates_the_layouts(
    ray_cluster: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/actors.py: each layout's run in turn, with its actors and threads, and each one's mean."""
    argv = ["--images", "4", "--size", "32", "--batch-size", "2", "--repeat", "1"]
    out = run_harness("actors.py", argv, monkeypatch, capsys)
    # This session's Ray has 2 CPUs: --actors 1 takes both cores, the default an actor per core.
    assert re.search(r"^ +1 +1 +2 +\d+\.\d\d +\d+$", out, re.MULTILINE), out
    assert re.search(r"^ +default +2 +1 +\d+\.\d\d +\d+$", out, re.MULTILINE), out
    assert re.search(r"^1: \d+\.\d\d images/s, 1\.00x$", out, re.MULTILINE), out
    assert re.search(r"^default: \d+\.\d\d images/s, \d+\.\d\dx$", out, re.MULTILINE), out
