"""Node and driver failures on a real multi-node Ray cluster (issue 7).

A `ray.cluster_utils.Cluster` runs a head and worker nodes as separate raylets on this machine.
The head has no CPUs, as on a production cluster (cluster.yaml): it runs the GCS and is the
drivers' node, so every task and actor of a job that needs a CPU (decoding, writing, the model
actors, the training workers) runs on the worker node, and removing that node takes them all
down. Each job runs as a subprocess driver (`adain ... --address`), so a test can SIGKILL it;
this test process never connects to the cluster (the session's own Ray stays untouched).

What is proven, per job:
  - a worker node dies mid-run (its raylet and every process on it killed) and a replacement
    joins: the run completes, every output exists exactly once at its key, the manifest has
    exactly one `ok` row per output and agrees with the run summary;
  - the driver is SIGKILLed mid-run: the same command run again completes, keeps every output
    written before the kill untouched (inode and mtime), makes only the rest, and duplicates
    nothing;
  - training loses its workers' node, restarts from the latest checkpoint on the replacement,
    then loses its driver and goes on from the latest checkpoint with --resume.
The rules augment resumes by (which outputs a dead run finished, whose lock may be taken
over) are also checked directly, without a cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.config import OutputSpec, Sizing
from pipeline.data.decode import decode_inputs
from pipeline.data.plan import RESUME_NEVER, RESUME_NEW_INPUTS, DrawnStyles, Plan, draw
from pipeline.data.writers import FileWriter, ShardWriter
from pipeline.model.checkpoint import load_decoder
from pipeline.storage import keys
from pipeline.storage.lock import release_if_dead
from pipeline.train.checkpoints import load_training_state
from tests import images
from tests.conftest import WeightFiles

T = TypeVar("T")
WORKER_CPUS = 2  # one worker node at a time; all the work of a job fits on it
RESERVED = ("_manifest/", "_runs/", "_state/", "_lock.json")
# A killed node is declared dead after 2 missed health checks 1 s apart (Ray's defaults take much longer).
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 2,
}


# ---------------------------------------------------------------------------------------------
# the cluster


@contextlib.contextmanager
def ray_state_kept() -> Iterator[None]:
    """cluster_utils points this process's Ray internal-KV client at the cluster whose nodes it
    starts, and clears it on shutdown: give the session's own Ray connection (conftest) its
    client back after each cluster operation."""
    from ray.experimental import internal_kv

    saved = internal_kv.global_gcs_client, internal_kv._initialized
    try:
        yield
    finally:
        internal_kv.global_gcs_client, internal_kv._initialized = saved


class FailingCluster:
    """A head without CPUs and exactly one worker node, which a test may kill and replace."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.address: str = cluster.address
        with ray_state_kept():
            self.worker = cluster.add_node(num_cpus=WORKER_CPUS)
            cluster.wait_for_nodes()

    def kill_worker_and_replace(self) -> None:
        """Hard-kill the worker node (its raylet, and with it every worker process on it) and
        add a new one, as an autoscaler would after a machine is lost."""
        with ray_state_kept():
            self.cluster.remove_node(self.worker, allow_graceful=False)
            self.worker = self.cluster.add_node(num_cpus=WORKER_CPUS)
            self.cluster.wait_for_nodes()


@pytest.fixture(scope="module")
def cluster() -> Iterator[FailingCluster]:
    from ray.cluster_utils import Cluster

    # Ray records the newest cluster's address in $RAY_TMPDIR/ray/ray_current_cluster, where any
    # `ray.init()` without an address on this machine would find and join it: keep it private.
    tmp = tempfile.mkdtemp(prefix="adain-cf-", dir="/tmp")  # short: Ray's socket paths live in it
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", tmp)
        with ray_state_kept():
            head = Cluster(
                initialize_head=True,
                connect=False,
                head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": SYSTEM_CONFIG},
            )
        try:
            yield FailingCluster(head)
        finally:
            with ray_state_kept():
                head.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# drivers, polling, files


def start_driver(argv: list[str], log: Path, cwd: Path, **env: str) -> subprocess.Popen:
    """`adain ARGV` as its own process, the way a user (or `ray job submit`) starts it."""
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *argv],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **env},
        )


def tail(log: Path) -> str:
    """The end of a driver's log, its error line first (Ray's own lines may follow it)."""
    if not log.exists():
        return "(no log)"
    text = log.read_text(errors="replace")
    errors = [line for line in text.splitlines() if line.startswith("adain: error")]
    return "\n".join([*errors, "...", text[-3000:]])


def wait_for(check: Callable[[], T | None], driver: subprocess.Popen, log: Path, what: str, timeout: float = 180) -> T:
    """Poll `check` until it returns something, while the driver is still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            assert driver.poll() is None, f"the job ended before {what}:\n{tail(log)}"
            return found
        assert driver.poll() is None, f"the job ended before {what}:\n{tail(log)}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}:\n{tail(log)}")


def finish(driver: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    try:
        code = driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
        raise AssertionError(f"the job did not finish within {timeout} s:\n{tail(log)}") from None
    assert code == 0, f"the job failed (exit {code}):\n{tail(log)}"
    return log.read_text()


def kill_driver(driver: subprocess.Popen) -> None:
    driver.send_signal(signal.SIGKILL)
    driver.wait()


def output_files(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under OUTPUT but the manifest, run logs, state and lock -> (inode, mtime_ns)."""
    found = {}
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith(RESERVED):
            stat = path.stat()
            found[rel] = (stat.st_ino, stat.st_mtime_ns)
    return found


def count_outputs(out: Path) -> int:
    """How many finished outputs there are (no temporary files), for polling."""
    return sum(1 for p in out.rglob("*.png") if not p.name.startswith(".")) if out.is_dir() else 0


def at_least(out: Path, n: int) -> Callable[[], int | None]:
    return lambda: found if (found := count_outputs(out)) >= n else None


def settled(read: Callable[[], T], quiet_s: float = 1.5, timeout: float = 60) -> T:
    """What `read` returns once it has stopped changing: a killed job's last writes are done."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError("the output kept changing after the job was killed")


def check_files(out: Path, expected: set[str]) -> dict[str, tuple[int, int]]:
    """Every expected output exactly once and nothing else visible; a write cut short by a kill
    may leave a hidden `.tmp-*` file beside its key, never a partial output."""
    files = output_files(out)
    visible = {k for k in files if not posixpath.basename(k).startswith(".")}
    assert visible == expected, f"missing {sorted(expected - visible)[:5]}, unexpected {sorted(visible - expected)[:5]}"
    hidden = set(files) - visible
    assert all(posixpath.basename(k).startswith(".tmp-") for k in hidden), sorted(hidden)
    for key in expected:
        with Image.open(out / key) as img:
            img.load()  # whole files only
    return {k: files[k] for k in visible}


def manifest_rows(out: Path) -> list[dict[str, Any]]:
    parts = sorted((out / "_manifest").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]).to_pylist() if parts else []


def summaries(out: Path) -> dict[str, dict[str, Any]]:
    """OUTPUT/_runs/RUN_ID.json of every finished run."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("_runs/*.json"))}


def stylized_key(row: dict[str, Any]) -> str:
    """The documented key of a stylize output: STYLE/REL_WITHOUT_EXT.png."""
    return f"{row['style']}/{posixpath.splitext(row['rel_path'])[0]}.png"


def augmented_key(row: dict[str, Any]) -> str:
    """The documented key of an augment output: FOLDERS/STEM__STYLE.png."""
    return f"{posixpath.splitext(row['rel_path'])[0]}__{row['style']}.png"


def check_run(
    out: Path,
    summary: dict[str, Any],
    key_of: Callable[[dict[str, Any]], str],
    expected: set[str],
    done: set[str] = frozenset(),
) -> None:
    """One run's manifest rows: exactly one per output, `skipped` for the outputs that were there
    before the run and `ok` for all the others, each naming the output at its key; counts that
    agree with the run summary."""
    rows = [r for r in manifest_rows(out) if r["run_id"] == summary["run_id"]]
    keys = [key_of(r) for r in rows]
    assert len(keys) == len(set(keys)), "an output recorded twice"
    assert set(keys) == expected
    for row, key in zip(rows, keys, strict=True):
        if key in done:
            assert (row["status"], row["output_uri"]) == ("skipped", str(out / key)), row
        else:
            assert (row["status"], row["output_uri"]) == ("ok", str(out / key)), row
    assert (summary["ok"], summary["skipped"], summary["error"]) == (len(expected - done), len(done), 0)
    assert summary["total"] == len(rows)


# ---------------------------------------------------------------------------------------------
# the jobs


def stylize_job(weights: WeightFiles, root: Path, inputs: int) -> tuple[list[str], set[str]]:
    """`adain stylize` flags over `inputs` 32 px images and one style, and the outputs expected."""
    for i in range(inputs):
        images.write(root / "in" / f"img{i:03d}.png", images.encoded(32, 32, "PNG", seed=i))
    style = images.write(root / "wave.png", images.encoded(32, 32, "PNG", seed=999))
    argv = [
        "stylize", "--input", str(root / "in"), "--style", str(style), "--output", str(root / "out"),
        "--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu",
        "--content-size", "32", "--style-size", "32", "--format", "png", "--batch-size", "2",
    ]  # fmt: skip
    return argv, {f"wave/img{i:03d}.png" for i in range(inputs)}


AUGMENT_STYLES = ["ink", "moss", "wave"]  # sorted, as the job sorts style ids


def augment_job(weights: WeightFiles, root: Path, inputs: int) -> tuple[list[str], set[str], list[str]]:
    """`adain augment` flags (2 of 3 styles per input, drawn) over `inputs` 32 px images in two
    class folders; the outputs expected (from the documented draw) and the input paths."""
    rels = [f"{'cats' if i % 2 else 'dogs'}/img{i:03d}.png" for i in range(inputs)]
    for i, rel in enumerate(rels):
        images.write(root / "in" / rel, images.encoded(32, 32, "PNG", seed=i))
    for j, name in enumerate(AUGMENT_STYLES):
        images.write(root / "styles" / f"{name}.png", images.encoded(32, 32, "PNG", seed=500 + j))
    argv = [
        "augment", "--input", str(root / "in"), "--styles", str(root / "styles"), "--output", str(root / "out"),
        "--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu",
        "--content-size", "32", "--style-size", "32", "--format", "png", "--batch-size", "2",
        "--per-image", "2", "--seed", "7",
    ]  # fmt: skip
    expected = set()
    for rel in rels:
        picks, _ = draw(7, rel, len(AUGMENT_STYLES), 2, (1.0, 1.0))
        expected |= {f"{posixpath.splitext(rel)[0]}__{AUGMENT_STYLES[p]}.png" for p in picks}
    return argv, expected, rels


def check_state(out: Path, rels: list[str]) -> None:
    """The incremental state records every input once, and the lock is gone."""
    state = pq.read_table(out / "_state" / "inputs.parquet").column("rel_path").to_pylist()
    assert sorted(state) == sorted(rels)
    assert not (out / "_lock.json").exists()


# ---------------------------------------------------------------------------------------------
# node failure: stylize, augment

NODE_INPUTS = 64  # 32 px, batch 2: the node dies with most of the work still to do
NODE_AFTER = 12


def test_stylize_completes_when_a_worker_node_dies(
    cluster: FailingCluster, weights: WeightFiles, tmp_path: Path
) -> None:
    """The only worker node dies mid-run, taking the model actor, the decoding and writing tasks
    and the blocks in its object store with it: Ray Data restarts the actor on the replacement
    node and retries the lost tasks, and every output is written exactly once and recorded once."""
    argv, expected = stylize_job(weights, tmp_path, NODE_INPUTS)
    out, log = tmp_path / "out", tmp_path / "driver.log"
    driver = start_driver([*argv, "--address", cluster.address], log, tmp_path)
    try:
        seen = wait_for(at_least(out, NODE_AFTER), driver, log, f"{NODE_AFTER} outputs")
        cluster.kill_worker_and_replace()
        assert driver.poll() is None, f"the job ended before its node died:\n{tail(log)}"
        assert seen < NODE_INPUTS
        finish(driver, log)
    finally:
        driver.kill()
        driver.wait()

    check_files(out, expected)
    (summary,) = summaries(out).values()
    assert summary["inputs"] == NODE_INPUTS
    check_run(out, summary, stylized_key, expected)
    assert len(manifest_rows(out)) == NODE_INPUTS  # nothing recorded twice, by any run


def test_augment_completes_when_a_worker_node_dies(
    cluster: FailingCluster, weights: WeightFiles, tmp_path: Path
) -> None:
    """The same for `adain augment`: the Augmenter actor and the tasks on the dead node are
    redone elsewhere; every drawn output exactly once, one ok row each, the state complete."""
    argv, expected, rels = augment_job(weights, tmp_path, NODE_INPUTS // 2)
    out, log = tmp_path / "out", tmp_path / "driver.log"
    driver = start_driver([*argv, "--address", cluster.address], log, tmp_path)
    try:
        seen = wait_for(at_least(out, NODE_AFTER), driver, log, f"{NODE_AFTER} outputs")
        cluster.kill_worker_and_replace()
        assert driver.poll() is None, f"the job ended before its node died:\n{tail(log)}"
        assert seen < len(expected)
        finish(driver, log)
    finally:
        driver.kill()
        driver.wait()

    check_files(out, expected)
    (summary,) = summaries(out).values()
    assert (summary["inputs_new"], summary["status"]) == (len(rels), "succeeded")
    check_run(out, summary, augmented_key, expected)
    assert len(manifest_rows(out)) == len(expected)
    check_state(out, rels)


# ---------------------------------------------------------------------------------------------
# driver failure: stylize, augment

KILL_INPUTS = 64
KILL_AFTER = 12


def kill_mid_run(
    argv: list[str], out: Path, log: Path, cwd: Path, expected: set[str]
) -> tuple[dict[str, tuple[int, int]], int]:
    """Start the job, SIGKILL its driver once KILL_AFTER outputs exist; the outputs left behind
    (inode, mtime) once the killed job's workers are gone, and the driver's pid."""
    driver = start_driver(argv, log, cwd)
    try:
        wait_for(at_least(out, KILL_AFTER), driver, log, f"{KILL_AFTER} outputs")
        kill_driver(driver)
    finally:
        driver.kill()
        driver.wait()
    left = settled(lambda: output_files(out))
    done = {k: v for k, v in left.items() if not posixpath.basename(k).startswith(".")}
    assert set(done) <= expected, sorted(set(done) - expected)
    assert KILL_AFTER <= len(done) < len(expected), f"{len(done)} outputs at the kill: it came too late"
    for key in done:
        with Image.open(out / key) as img:
            img.load()  # what a killed job leaves visible is whole
    return done, driver.pid


def test_stylize_rerun_after_the_driver_is_killed(
    cluster: FailingCluster, weights: WeightFiles, tmp_path: Path
) -> None:
    """SIGKILL the driver mid-run; the same command again keeps what was written (same inode and
    mtime, recorded `skipped`), makes the rest, and every output exists exactly once."""
    argv, expected = stylize_job(weights, tmp_path, KILL_INPUTS)
    argv += ["--address", cluster.address]
    out = tmp_path / "out"
    done, _ = kill_mid_run(argv, out, tmp_path / "killed.log", tmp_path, expected)
    assert not summaries(out), "the killed run cannot have finished"

    finish(start_driver(argv, tmp_path / "rerun.log", tmp_path), tmp_path / "rerun.log")
    after = check_files(out, expected)
    assert {k: after[k] for k in done} == done, "outputs written before the kill were redone"
    (summary,) = summaries(out).values()
    check_run(out, summary, stylized_key, expected, set(done))
    # Across both runs (the killed one may have recorded some rows): no output made twice.
    ok = [r["output_uri"] for r in manifest_rows(out) if r["status"] == "ok"]
    assert len(ok) == len(set(ok))


def test_augment_rerun_after_the_driver_is_killed(
    cluster: FailingCluster, weights: WeightFiles, tmp_path: Path
) -> None:
    """SIGKILL the augment driver mid-run: its lock stays behind, naming a process that is gone.
    The same command again takes the lock over at once, keeps the outputs the killed run wrote
    (recorded `skipped`), makes the rest, records every input and releases the lock."""
    argv, expected, rels = augment_job(weights, tmp_path, KILL_INPUTS // 2)
    argv += ["--address", cluster.address]
    out = tmp_path / "out"
    done, pid = kill_mid_run(argv, out, tmp_path / "killed.log", tmp_path, expected)
    holder = json.loads((out / "_lock.json").read_text())
    assert holder["pid"] == pid, "the killed run's lock is left behind"
    assert not summaries(out) and not (out / "_state").exists()

    log = tmp_path / "rerun.log"
    finish(start_driver(argv, log, tmp_path), log)
    after = check_files(out, expected)
    assert {k: after[k] for k in done} == done, "outputs written before the kill were redone"
    (summary,) = summaries(out).values()
    assert summary["inputs_new"] == len(rels) and summary["run_id"] != holder["owner"]
    check_run(out, summary, augmented_key, expected, set(done))
    ok = [r["output_uri"] for r in manifest_rows(out) if r["status"] == "ok"]
    assert len(ok) == len(set(ok))
    check_state(out, rels)


def test_augment_keeps_only_outputs_a_dead_run_finished(tmp_path: Path) -> None:
    """What the next run keeps of a dead run's work: outputs of new inputs written since their
    input was (an input with all of them is not even read); never an output older than its
    input (the input was replaced meanwhile), never a changed input's, and nothing in shards."""
    src, out = tmp_path / "in", tmp_path / "out"
    rels = ["cats/all.png", "cats/some.png", "dogs/replaced.png", "dogs/changed.png"]
    for i, rel in enumerate(rels):
        images.write(src / rel, images.encoded(40, 32, "PNG", seed=i))
    picks = {rel: [AUGMENT_STYLES[p] for p in draw(7, rel, 3, 2, (1.0, 1.0))[0]] for rel in rels}
    output = OutputSpec(str(out), "png")

    def write_output(rel: str, style: str) -> Path:
        return images.write(out / f"{posixpath.splitext(rel)[0]}__{style}.png", images.encoded(32, 32, "PNG"))

    for rel in ("cats/all.png", "dogs/replaced.png", "dogs/changed.png"):
        for style in picks[rel]:
            write_output(rel, style)
    write_output("cats/some.png", picks["cats/some.png"][1])
    for style in picks["dogs/replaced.png"]:  # written an hour before its input's current version
        stamp = (src / "dogs/replaced.png").stat().st_mtime - 3600
        os.utime(out / f"dogs/replaced__{style}.png", (stamp, stamp))
    (src / "cats/all.png").unlink()  # read now, it would be an error row
    batch = pa.table(
        {
            "input_uri": [str(src / rel) for rel in rels],
            "rel_path": rels,
            "key": [posixpath.splitext(rel)[0] for rel in rels],
            "mtime_ns": [0 if rel == "cats/all.png" else (src / rel).stat().st_mtime_ns for rel in rels],
            "new": [True, True, True, False],
        }
    )
    draws = DrawnStyles(tuple(AUGMENT_STYLES), per_image=2, alpha_range=(1.0, 1.0), seed=7)
    sizing = Sizing(content_size=32, style_size=32)

    plan = Plan(draws, FileWriter(output, keys.augmented_key), RESUME_NEW_INPUTS)
    decoded = decode_inputs(batch, plan=plan, sizing=sizing, existing=plan.existing())
    rows = {r["rel_path"]: r for r in decoded.to_pylist()}
    assert {rel: [s for s, done in zip(r["styles"], r["done"], strict=True) if done] for rel, r in rows.items()} == {
        "cats/all.png": picks["cats/all.png"],
        "cats/some.png": [picks["cats/some.png"][1]],
        "dogs/replaced.png": [],
        "dogs/changed.png": [],
    }
    assert rows["cats/all.png"]["pixels"] is None and rows["cats/all.png"]["error"] is None  # not read
    for rel in rels[1:]:
        assert rows[rel]["pixels"] is not None and rows[rel]["error"] is None, rel
    for rel, row in rows.items():
        assert row["styles"] == picks[rel]
    in_shards = Plan(draws, ShardWriter(output, "run"), RESUME_NEVER)
    shards = decode_inputs(batch.slice(1), plan=in_shards, sizing=sizing).to_pylist()
    assert all(not any(r["done"]) and r["pixels"] is not None for r in shards)


def test_a_dead_runs_lock_is_taken_over_and_no_other(tmp_path: Path) -> None:
    """Only a lock whose process is gone from this host is released before `acquire`: a live
    holder's, another host's (which may be alive) and an unreadable one are left alone."""
    lock = tmp_path / "_lock.json"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    body = {"owner": "dead-run", "host": socket.gethostname(), "acquired_at": 0, "expires_at": time.time() + 3600}
    for holder, kept in (
        ({**body, "pid": int(gone.stdout)}, False),
        ({**body, "pid": os.getppid()}, True),
        ({**body, "pid": int(gone.stdout), "host": "another-host"}, True),
    ):
        lock.write_text(json.dumps(holder))
        release_if_dead(str(lock))
        assert lock.exists() == kept, holder
    lock.write_text("{not json")
    release_if_dead(str(lock))
    assert lock.read_text() == "{not json"


# ---------------------------------------------------------------------------------------------
# training: the workers' node dies, then the driver

TRAIN_ITERS = 32
CHECKPOINT_EVERY = 4


def registered_checkpoint(run: Path, since: int = 0) -> int | None:
    """The iteration of the newest checkpoint Ray Train has registered (what a restart resumes
    from), if an attempt that resumed from iteration `since` or later reported it."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
        metrics = snapshot["latest_checkpoint_result"]["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(metrics["iteration"]) if metrics["resumed_from"] >= since else None


def attempts(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """metrics.jsonl rows split into attempts: a new attempt starts where the iteration does not
    follow on from the previous row."""
    split: list[list[dict[str, Any]]] = []
    for row in rows:
        if (
            split
            and row["iteration"] == split[-1][-1]["iteration"] + 1
            and row["resumed_from"] == split[-1][-1]["resumed_from"]
        ):
            split[-1].append(row)
        else:
            split.append([row])
    return split


def test_training_goes_on_after_its_node_dies_and_after_its_driver_is_killed(
    cluster: FailingCluster, weights: WeightFiles, tmp_path: Path
) -> None:
    """2 DDP workers (gloo) on the worker node. (1) The node dies once a checkpoint is registered:
    Ray Train restarts the worker group on the replacement node from the latest checkpoint.
    (2) Once that attempt has registered a checkpoint of its own, the driver is SIGKILLed:
    `--resume` goes on from the newest checkpoint to the last iteration. Every attempt starts
    right after the checkpoint it resumed from and reports each iteration once; Adam's state
    carries over all the way; the exported decoder loads."""
    # Enough images that an epoch is 16 steps: each epoch starts the shard's reading over, which takes seconds.
    for i in range(64):
        images.write(tmp_path / "content" / f"c{i:02d}.jpg", images.encoded(40 + i % 8, 40, seed=i))
    for i in range(64):
        images.write(tmp_path / "style" / f"s{i:02d}.png", images.encoded(40, 40 + i % 4, "PNG", seed=100 + i))
    storage, run = tmp_path / "runs", tmp_path / "runs" / "nodes"
    argv = [
        "train", "--content", str(tmp_path / "content"), "--style", str(tmp_path / "style"),
        "--storage", str(storage), "--name", "nodes", "--address", cluster.address,
        "--workers", "2", "--batch-size", "2", "--max-iter", str(TRAIN_ITERS), "--resize", "64", "--crop", "32",
        "--checkpoint-every", str(CHECKPOINT_EVERY), "--log-every", "1",
        "--samples", "1", "--encoder", str(weights.vgg),
    ]  # fmt: skip
    # Ray Train's controller polls its workers every 2 s by default; every 0.2 s here.
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    log = tmp_path / "train.log"
    driver = start_driver(argv, log, tmp_path, **env)
    try:
        lost_at = wait_for(lambda: registered_checkpoint(run), driver, log, "a first checkpoint", timeout=240)
        cluster.kill_worker_and_replace()
        # A checkpoint of the restarted group (the dying one may still register one of its own).
        killed_at = wait_for(
            lambda: registered_checkpoint(run, since=lost_at),
            driver,
            log,
            "a checkpoint after the restart",
            timeout=240,
        )
        kill_driver(driver)
    finally:
        driver.kill()
        driver.wait()
    assert killed_at < TRAIN_ITERS
    settled(lambda: (run / "metrics.jsonl").read_text())  # the killed run's workers are gone

    resume = tmp_path / "resume.log"
    finish(start_driver([*argv, "--resume"], resume, tmp_path, **env), resume)

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    runs = attempts(rows)
    assert len(runs) == 3, [(a[0]["iteration"], a[-1]["iteration"], a[0]["resumed_from"]) for a in runs]
    first, after_node, after_driver = runs
    assert first[0]["iteration"] == 1 and first[0]["resumed_from"] == 0
    # The restart after the node died resumed from a registered checkpoint no older than the one
    # registered when the node died, and no newer than what the first attempt reached.
    assert after_node[0]["resumed_from"] % CHECKPOINT_EVERY == 0
    assert lost_at <= after_node[0]["resumed_from"] <= first[-1]["iteration"]
    assert after_driver[0]["resumed_from"] % CHECKPOINT_EVERY == 0
    assert killed_at <= after_driver[0]["resumed_from"] <= after_node[-1]["iteration"]
    assert after_driver[-1]["iteration"] == TRAIN_ITERS
    for attempt in runs:
        iterations = [r["iteration"] for r in attempt]
        start = attempt[0]["resumed_from"]
        assert iterations == list(range(start + 1, start + 1 + len(iterations))), iterations
        assert {r["workers"] for r in attempt} == {2}
        for row in attempt:  # the schedule goes on across both failures
            assert row["lr"] == pytest.approx(1e-4 / (1 + 5e-5 * (row["iteration"] - 1)))

    checkpoints = sorted(p.name for p in run.glob("checkpoint_*") if (p / "state.pt").is_file())
    assert checkpoints[-1] == f"checkpoint_{TRAIN_ITERS:08d}"
    for name in checkpoints:
        state = load_training_state((run / name / "state.pt").read_bytes())
        assert state["iteration"] == int(name.split("_")[1])
    final = load_training_state((run / checkpoints[-1] / "state.pt").read_bytes())
    # Adam's step counts: one per iteration since the start, through both restarts.
    assert {int(s["step"]) for s in final["optimizer"]["state"].values()} == {TRAIN_ITERS}
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert [s["resume"] for s in sessions] == [False, True]

    decoder = load_decoder(str(run / "decoder.pth"))
    assert decoder.meta["iteration"] == TRAIN_ITERS
    assert all(torch.equal(v, final["decoder"][k]) for k, v in decoder.module.state_dict().items())
