"""The first run as a new user meets it: a progress bar counted in images, nothing else on the
terminal, failures in seconds in one line, documented exit statuses, `adain report`, and the
README's `ray job submit` path.

The terminal tests run the real `adain` command in a subprocess: under a pseudo-terminal for the
bar, piped for the periodic lines.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.cli.commands import EXIT_ERROR_ROWS, EXIT_FAILED, EXIT_OK, EXIT_USAGE, outcome
from pipeline.config import Controls, Sizing
from pipeline.data import preflight
from pipeline.data.preflight import check_address, check_style_images, check_styles
from pipeline.data.progress import Progress
from pipeline.errors import ClusterError, ConfigError, ImageError, StorageError
from pipeline.imaging.codec import prepare
from pipeline.storage.uri import read_bytes
from tests import images
from tests.banks import bank_row, write_bank
from tests.conftest import S3Server, WeightFiles, free_port

ROOT = Path(__file__).resolve().parent.parent
# What must never reach a clean run's terminal: warnings, errors, Ray's native log lines, tracebacks.
NOISE = re.compile(r"WARNING|Warning|ERROR|Error|Traceback|^\[\d{4}-\d\d-\d\d .*\] ", re.MULTILINE)


def job_flags(weights: WeightFiles) -> list[str]:
    return [
        "--encoder", str(weights.vgg), "--decoder", str(weights.decoder), "--device", "cpu",
        "--content-size", "32", "--style-size", "32", "--batch-size", "4",
    ]  # fmt: skip


def photos(folder: Path, n: int, broken: tuple[str, ...] = ()) -> Path:
    for i in range(n):
        images.write(folder / f"img{i:02d}.jpg", images.encoded(40, 32, seed=i))
    for name in broken:
        images.write(folder / name, images.truncated_jpeg())
    return folder


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 180):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 240) -> tuple[int, str]:
    """Run `adain ARGS` with a pseudo-terminal as its stdin, stdout and stderr; (status, what it showed)."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a new user's local Ray
    command = [sys.executable, "-m", "pipeline.cli", *args]
    proc = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, cwd=cwd, env=env)
    os.close(follower)
    shown, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: every writer is gone
                break
            if not chunk:
                break
            shown += chunk
        status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    return status, shown.decode(errors="replace")


def test_a_terminal_shows_a_bar_counted_in_images_and_nothing_else(weights: WeightFiles, tmp_path: Path) -> None:
    """A new user's first run (a local Ray): the bar counts outputs of the total in images, with
    the rate; no warning, error, native log line or traceback appears; exit status 0."""
    photos(tmp_path / "in", 8)
    images.write(tmp_path / "style.jpg", images.encoded(32, 32, seed=99))
    args = ["stylize", "--input", "in", "--style", "style.jpg", "--output", "out", *job_flags(weights)]
    status, shown = run_in_terminal(args, tmp_path)
    assert status == EXIT_OK, shown[-3000:]
    assert re.search(r"stylize: 100%\|.*\| 8/8 \[.*images/s", shown), shown[-3000:]
    assert not NOISE.search(shown), shown[-3000:]
    assert "run " in shown and "8 ok, 0 error" in shown


def test_without_a_terminal_progress_is_periodic_lines_in_images(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path
) -> None:
    """Piped, the job prints a line every ADAIN_PROGRESS_EVERY seconds in images (done of the
    total, rate), counting up to the total, and no Ray progress tables."""
    photos(tmp_path / "in", 12)
    images.write(tmp_path / "style.jpg", images.encoded(32, 32, seed=99))
    args = ["stylize", "--input", "in", "--style", "style.jpg", "--output", "out", "--address", ray_cluster]
    result = run_cli([*args, *job_flags(weights)], tmp_path, env={"ADAIN_PROGRESS_EVERY": "0.2"})
    assert result.returncode == EXIT_OK, result.stderr
    lines = re.findall(r"^adain: stylize (\d+)/12 images \(\d+%\), [\d.]+ images/s", result.stderr, re.MULTILINE)
    done = [int(n) for n in lines]
    assert len(done) >= 2 and done == sorted(done) and done[-1] == 12, result.stderr
    assert not NOISE.search(result.stderr), result.stderr
    assert "Running Dataset" not in result.stderr and "MapBatches" not in result.stderr


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "https://head:8265", "head", "head:gcs", ":6379"])
def test_an_address_that_is_not_host_port_says_what_to_give(address: str) -> None:
    """The jobs API's URL (what `ray job submit` takes) was tried as a host name: "Name or service not known"."""
    with pytest.raises(ClusterError, match=r"--address .*(HOST:PORT)"):
        check_address(address)


def test_a_missing_style_bank_or_image_is_found_before_ray(tmp_path: Path) -> None:
    images.write(tmp_path / "styles" / "wave.png", images.encoded(32, 32, "PNG", seed=1))
    check_styles((str(tmp_path / "styles"), str(tmp_path / "styles" / "wave.png")))
    for missing, words in (("bank.parquet", "no such style bank"), ("wave.jpg", "not found")):
        with pytest.raises(ConfigError, match=words):
            check_styles((str(tmp_path / "styles"), str(tmp_path / missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no style images in"):
        check_styles((str(tmp_path / "empty"),))


def test_style_flags_that_do_not_fit_the_styles_are_found_before_ray(tmp_path: Path) -> None:
    """They were found only as the styles were encoded, after Ray had started: 6-11 s later."""
    for name in ("a", "b"):
        images.write(tmp_path / "styles" / f"{name}.png", images.encoded(32, 32, "PNG", seed=len(name)))
    (tmp_path / "bank.parquet").write_bytes(b"found, not read")
    styles, bank = (str(tmp_path / "styles"),), (str(tmp_path / "bank.parquet"),)
    check_styles(styles, Controls(style_weights=(1.0, 3.0)), per_image=2)
    check_styles(bank, Controls(preserve_color="luminance"), per_image=5)  # a bank's rows count as it is read
    for refs, controls, per_image, words in (
        (styles, Controls(style_weights=(1.0, 2.0, 3.0)), 1, "3 weights for 2 styles"),
        (styles, None, 3, "--per-image 3: there are only 2 styles"),
        ((*bank, styles[0]), None, 1, "must be the only --style"),
        (bank, Controls(preserve_color="coral"), 1, "coral"),
        (bank, Controls(style_weights=(1.0,)), 1, "style-weights"),
    ):
        with pytest.raises(ConfigError, match=words):
            check_styles(refs, controls, per_image)


def mutated(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """`data` cut at `cut` (0: whole) with bits flipped at (position, bit), positions taken modulo its length."""
    out = bytearray(data[:cut] if cut else data)
    for at, bit in flips:
        out[at % len(out)] ^= 1 << bit
    return bytes(out)


VALID_STYLES = {"JPEG": images.encoded(32, 32, "JPEG", seed=3), "PNG": images.encoded(32, 32, "PNG", seed=4)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(sorted(VALID_STYLES)),
    cut=st.one_of(st.just(0), st.integers(1, 3000)),
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), max_size=3),
)
def test_a_damaged_style_image_is_one_line_before_ray_where_the_job_would_refuse_it(
    tmp_path: Path, fmt: str, cut: int, flips: list[tuple[int, int]]
) -> None:
    """A style image cut short or with bits flipped: the preflight refuses it in one line naming it
    exactly where the job's own decoding and sizing would (there, after Ray had started)."""
    data = mutated(VALID_STYLES[fmt], cut, flips)
    style = images.write(tmp_path / f"style.{fmt.lower()}", data)
    try:
        prepare(data, 32)
        job_refuses = False
    except ImageError:
        job_refuses = True
    try:
        check_styles((str(style),), sizing=Sizing(content_size=32, style_size=32))
    except ConfigError as exc:
        message = str(exc)
        assert job_refuses, f"refused what the job takes: {message}"
        assert message.startswith(f"--style {style}: ") and "\n" not in message, message
        assert message.endswith("; replace or remove that style image"), message
    else:
        assert not job_refuses, "passed what the job refuses"


def test_style_images_past_the_decoding_budget_are_checked_by_their_headers(tmp_path: Path) -> None:
    """Many style images are each read and their headers checked, decoded whole only within the budget:
    a file cut short passes unnoticed past it, one that is no image does not; the first in order is named."""
    folder = tmp_path / "styles"
    images.write(folder / "a.jpg", images.truncated_jpeg())
    images.write(folder / "b.png", images.encoded(32, 32, "PNG"))
    uris = [str(folder / "a.jpg"), str(folder / "b.png")]
    sizing = Sizing(content_size=32, style_size=32)
    check_style_images(uris, sizing, decode_pixels=0)
    with pytest.raises(ConfigError, match=r"a\.jpg: corrupt or truncated JPEG"):
        check_style_images(uris, sizing)
    images.write(folder / "c.png", b"text, not an image")
    images.write(folder / "d.png", images.huge_header_png())
    b, c, d = (str(folder / name) for name in ("b.png", "c.png", "d.png"))
    with pytest.raises(ConfigError, match=r"c\.png: not an image"):
        check_style_images([b, c, d], sizing, decode_pixels=0)
    with pytest.raises(ConfigError, match=r"d\.png: 30000x30000 .* \(a decompression bomb\?\)"):
        check_style_images([b, d], sizing, decode_pixels=0)
    with pytest.raises(ConfigError, match=r"b\.png: 4x4 as sized for the model: too small"):
        check_style_images([str(folder / "b.png")], Sizing(content_size=32, style_size=4))


def test_a_style_image_that_cannot_be_read_keeps_the_storage_advice(tmp_path: Path, s3_server: S3Server) -> None:
    """A style image the storage refuses (no read permission, a missing bucket) is a StorageError in the
    storage's own words, not an image to replace."""
    locked = images.write(tmp_path / "locked.png", images.encoded(32, 32, "PNG"))
    missing = f"s3://{s3_server.new_bucket()}-gone/style.png"
    sizing = Sizing(content_size=32, style_size=32)
    with pytest.raises(
        StorageError, match=r"^--style s3://.*-gone/style\.png: the bucket does not exist; create it"
    ) as s3:
        check_style_images([missing], sizing)
    assert "replace or remove" not in str(s3.value)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: a file without read permission is still readable")
        with pytest.raises(StorageError, match=rf"^--style {re.escape(str(locked))}: permission denied") as local:
            check_style_images([str(locked)], sizing)
        assert "replace or remove" not in str(local.value)
    finally:
        locked.chmod(0o644)


def test_which_style_images_are_decoded_whole_follows_their_order_not_the_threads(tmp_path: Path) -> None:
    """The decoding budget goes to the images in their order: the first takes it all, so a truncated
    second one (read first: the first carries 16 MB after its image) is checked by its header alone, every run."""
    small = images.encoded(64, 64, "PNG")
    first = images.write(tmp_path / "a.png", small + bytes(16 << 20))  # bytes after IEND: Pillow reads none
    cut = images.write(tmp_path / "b.jpg", images.truncated_jpeg())
    sizing = Sizing(content_size=32, style_size=32)
    for _ in range(5):
        check_style_images([str(first), str(cut)], sizing, decode_pixels=64 * 64)
    with pytest.raises(ConfigError, match=r"b\.jpg: corrupt or truncated JPEG"):
        check_style_images([str(cut), str(first)], sizing, decode_pixels=64 * 64)


def test_a_slow_style_read_holds_up_none_of_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check waited for every image before it: one slow read (a large object on a slow store)
    left the other threads idle behind it. Here the first read waits until all the others are made."""
    styles = [str(images.write(tmp_path / f"s{i:02d}.png", images.encoded(32, 32, "PNG", seed=i))) for i in range(40)]
    others, lock, all_read, waits = set(), threading.Lock(), threading.Event(), []

    def read(uri: str, max_bytes: int | None = None) -> bytes:
        if uri == styles[0]:
            waits.append(all_read.wait(timeout=10))  # False: the others waited on this one
        else:
            with lock:
                others.add(uri)
                if len(others) == len(styles) - 1:
                    all_read.set()
        return read_bytes(uri, max_bytes)

    monkeypatch.setattr(preflight, "read_bytes", read)
    check_style_images(styles, Sizing(content_size=32, style_size=32))
    assert waits[0], f"{len(others)} of {len(styles) - 1} read while the first was slow"


def test_the_style_checks_load_neither_torch_nor_ray(tmp_path: Path) -> None:
    """Style images and a bank's file are checked before Ray starts and torch loads (2 s of imports
    each, on a quiet machine), torch only for a bank's encoder."""
    style = images.write(tmp_path / "style.png", images.encoded(32, 32, "PNG"))
    bank = write_bank(tmp_path / "bank.parquet", [bank_row("a")])
    code = (
        "import sys; from pipeline.config import Sizing; from pipeline.data.preflight import check_styles;"
        "from pipeline.data.bank_table import check_bank;"
        f"check_styles(({str(style)!r},), sizing=Sizing(32, 32)); check_bank({bank!r}, lambda: 'ab');"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize("case", ["damaged style image", "bank of another encoder"])
def test_a_style_the_job_cannot_use_stops_it_before_ray_starts(
    case: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """Found as the styles were encoded, while Ray started: exit 1 or 2 after 15 s. Now one line, exit 2,
    and Ray never starts."""

    def ray_starts(*args: object) -> None:
        raise AssertionError("Ray started")

    monkeypatch.setattr("pipeline.data.cluster.connect_while", ray_starts)
    photos(tmp_path / "in", 2)
    images.write(tmp_path / "styles" / "good.jpg", images.encoded(32, 32, seed=5))
    if case == "damaged style image":
        style = images.write(tmp_path / "styles" / "cut.jpg", images.truncated_jpeg())
        words, given = f"--style {style}: corrupt or truncated JPEG", tmp_path / "styles"
    else:
        given = write_bank(tmp_path / "bank.parquet", [bank_row("a")], meta=ANOTHER_ENCODER)
        words = f"{given}: this style bank was built with encoder {'ab' * 6}, but encoder"
    args = ["stylize", "--input", str(tmp_path / "in"), "--style", str(given), "--output", str(tmp_path / "out")]
    started = time.monotonic()
    assert main([*args, *job_flags(weights)]) == EXIT_USAGE
    took = time.monotonic() - started
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"adain: error: {words}"), lines
    assert not (tmp_path / "out").exists()
    assert took < 5, f"took {took:.1f} s"


ANOTHER_ENCODER = {b"adain.format": b"adain-ray.style-bank/1", b"adain.encoder_sha256": b"ab" * 32}


FAIL_FAST = [
    "unusable output",
    "missing output bucket",
    "missing input",
    "unreachable address",
    "missing style",
    "local ray cannot start",
]


@pytest.mark.parametrize("case", FAIL_FAST)
def test_what_a_user_gets_wrong_fails_in_seconds_in_one_line(
    case: str, weights: WeightFiles, s3_server: S3Server, tmp_path: Path
) -> None:
    """Before any Ray work (or as a local Ray fails to start), within 10 s, one line saying what failed,
    and no traceback."""
    photos(tmp_path / "in", 2)
    images.write(tmp_path / "style.jpg", images.encoded(32, 32, seed=99))
    (tmp_path / "a-file").write_text("not a folder")
    output, inputs, address, style = str(tmp_path / "out"), str(tmp_path / "in"), [], "style.jpg"
    if case == "unusable output":
        output = str(tmp_path / "a-file" / "out")
    elif case == "missing output bucket":
        output = "s3://no-such-bucket-for-adain/out"
    elif case == "missing input":
        inputs = str(tmp_path / "no-such-folder")
    elif case == "missing style":
        style = "stlye.jpg"
    elif case == "unreachable address":
        address = ["--address", f"127.0.0.1:{free_port()}"]
    env = {k: "" for k in ("RAY_ADDRESS",) if k in os.environ}
    if case == "local ray cannot start":  # Ray's temporary folder below a file: ray.init raised NotADirectoryError
        env["RAY_TMPDIR"] = str(tmp_path / "a-file")
    started = time.monotonic()
    args = ["stylize", "--input", inputs, "--style", style, "--output", output, *address, *job_flags(weights)]
    result = run_cli(args, tmp_path, env=env, timeout=60)
    took = time.monotonic() - started
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # a --style that is not there is the user's configuration (a ConfigError); the rest fail to start
    assert result.returncode == (EXIT_USAGE if case == "missing style" else EXIT_FAILED), result.stderr
    assert len(lines) == 1 and lines[0].startswith("adain: error: "), result.stderr
    assert "Traceback" not in result.stderr
    words = {
        "unusable output": "a-file",
        "missing output bucket": "no-such-bucket-for-adain",
        "missing input": "not found",
        "unreachable address": "cannot reach the Ray cluster",
        "missing style": "stlye.jpg: not found",
        "local ray cannot start": "could not start a local Ray (",
    }
    assert words[case] in lines[0], lines[0]
    assert took < 10, f"took {took:.1f} s"
    assert not (tmp_path / "out").exists()


OUTPUT_FLAGS = {
    "stylize": "--output", "augment": "--output", "styles index": "--output", "train": "--storage",
    "transfer": "-o", "transfer to a file": "-o",
}  # fmt: skip


@pytest.mark.parametrize("command", list(OUTPUT_FLAGS))
def test_an_output_that_is_a_file_is_one_plain_line(
    command: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing file given as the folder to write under was 'Errno 17 File exists' on a probe's
    or an output's path (exit 3 in transfer, for each image); one check says what it is instead."""
    photos(tmp_path / "in", 1)
    style = str(images.write(tmp_path / "style.jpg", images.encoded(32, 32, seed=99)))
    taken = tmp_path / "outfile"
    taken.write_text("a file")
    out, src, encoder = str(taken), str(tmp_path / "in"), str(weights.vgg)
    argv = {
        "stylize": ["stylize", "--input", src, "--style", style, "--output", out, *job_flags(weights)],
        "augment": ["augment", "--input", src, "--style", style, "--output", out, *job_flags(weights)],
        "styles index": ["styles", "index", "--style", style, "--output", f"{out}/bank.parquet", "--encoder", encoder],
        "train": ["train", "--content", src, "--style", src, "--storage", out, "--name", "r", "--encoder", encoder],
        "transfer": ["transfer", src, style, "-o", out, *job_flags(weights)[:6]],
        "transfer to a file": ["transfer", src, style, "-o", f"{out}/x.jpg", *job_flags(weights)[:6]],
    }[command]
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err == (
        f"adain: error: {OUTPUT_FLAGS[command]}: {taken} is a file, not a directory; "
        "give a directory (or prefix) to write under\n"
    ), err
    assert taken.read_text() == "a file"


@pytest.mark.parametrize("command", ["stylize", "augment"])
def test_damaged_weights_fail_in_the_driver_in_one_line(
    command: str, ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A decoder that downloads but does not load (here: NaN weights) fails in one line before any
    model actor starts, not as each actor's death in Ray's traceback."""
    photos(tmp_path / "in", 2)
    images.write(tmp_path / "styles" / "style.jpg", images.encoded(32, 32, seed=99))
    state = {k: v.clone() for k, v in weights.decoder_state.items()}
    state["1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "decoder.pth")
    flags = [*job_flags(weights), "--decoder", str(tmp_path / "decoder.pth")]
    args = [command, "--input", str(tmp_path / "in"), "--style", str(tmp_path / "styles"), "--output"]
    assert main([*args, str(tmp_path / "out"), *flags]) == EXIT_FAILED
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "decoder.pth: the weights hold NaN or inf values" in lines[0], lines
    assert not list((tmp_path / "out").rglob("*.jpg"))


def test_work_a_local_ray_cannot_hold_fails_at_once_and_a_cluster_says_what_it_waits_for(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GPU actors or training workers beyond a Ray this process started fail in one line, where Ray
    would wait in silence for ever; a joined cluster may scale up, so there it is one warning line."""
    photos(tmp_path / "in", 2)
    images.write(tmp_path / "style.jpg", images.encoded(32, 32, seed=99))
    stylize = ["stylize", "--input", str(tmp_path / "in"), "--style", str(tmp_path / "style.jpg")]
    assert main([*stylize, "--output", str(tmp_path / "out"), *job_flags(weights), "--device", "cuda"]) == EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert err.startswith("adain: error: 1 model actor on GPUs would need 1 GPU") and "--device cpu" in err, err
    train = ["train", "--content", str(tmp_path / "in"), "--style", str(tmp_path / "in"), "--storage",
             str(tmp_path / "runs"), "--name", "gpus", "--encoder", str(weights.vgg)]  # fmt: skip
    assert main([*train, "--workers", "2", "--gpus-per-worker", "1"]) == EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert err.startswith("adain: error: 2 training workers would need 2 GPU, and this machine's Ray has 0 GPU"), err
    assert not (tmp_path / "runs" / "gpus").exists()  # the name is not taken by a run that never started
    # Joined from another process, the same cluster may be one an autoscaler grows: a warning, no wait here.
    code = (
        "import logging, ray; from pipeline.data.cluster import check_fits; logging.basicConfig();"
        f"ray.init(address={ray_cluster!r}, log_to_driver=False); check_fits({{'GPU': 4}}, 'work', '--x'); print('on')"
    )
    joined = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert joined.returncode == 0 and joined.stdout.strip() == "on", joined.stderr
    assert "work: waiting for 4 GPU; the cluster has 0 GPU now" in joined.stderr, joined.stderr


def test_counts_agree_with_their_number(capsys: pytest.CaptureFixture[str]) -> None:
    """'1 errors', '1 outputs failed': what a run prints says one thing in the singular."""
    failure = {"input_uri": "in/a.jpg", "style": "wave", "error": "not an image"}
    assert outcome({"error": 1, "failures": [failure]}, "out") == EXIT_ERROR_ROWS
    assert capsys.readouterr().err.splitlines()[-1].startswith("adain: 1 output failed; list them all with: ")
    for errors in (1, 2):  # each update prints its line (every_s 0)
        Progress(2, interactive=False, every_s=0.0).update({"ok": 2 - errors, "error": errors})
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(" images/s, 1 error") and lines[1].endswith(" images/s, 2 errors"), lines


def test_error_rows_exit_3_name_the_failures_and_the_report_lists_them(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that finished with error rows exits 3 and names its failed inputs with the reason and
    how to list them all; `adain report` shows the runs, the counts and the reasons, `--errors`
    every failed output, `--html` a labelled contact sheet. A clean re-run exits 0, and its
    preview shows the outputs kept from the first run."""
    src = photos(tmp_path / "in", 3, broken=("broken1.jpg", "broken2.jpg"))
    images.write(tmp_path / "style.jpg", images.encoded(32, 32, seed=99))
    out = tmp_path / "out"
    argv = ["stylize", "--input", str(src), "--style", str(tmp_path / "style.jpg"), "--output", str(out)]
    assert main([*argv, *job_flags(weights)]) == EXIT_ERROR_ROWS
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("adain: failed: ")]
    assert len(failed) == 2 and all("broken" in line and "truncated" in line for line in failed), err
    assert f"adain report {out} --errors" in err

    html = tmp_path / "report.html"
    assert main(["report", str(out), "--errors", "--html", str(html)]) == EXIT_OK
    shown = capsys.readouterr().out
    assert re.search(r"outputs now: 3 ok, 2 error, 0 skipped", shown), shown
    assert re.search(r"^\s+2\s+.*truncated", shown, re.MULTILINE), shown  # two files, one reason
    listed = [line.split("\t") for line in shown.splitlines() if "\t" in line]
    assert sorted(Path(uri).name for uri, _, _ in listed) == ["broken1.jpg", "broken2.jpg"]
    page = html.read_text()
    assert page.count("<tr><td><figure>") == 3 and page.count("data:image/jpeg;base64,") == 9
    assert "img00.jpg" in page and ">style<" in page

    (src / "broken1.jpg").unlink()
    (src / "broken2.jpg").unlink()
    preview = tmp_path / "preview.png"
    assert main([*argv, "--preview", str(preview), *job_flags(weights)]) == EXIT_OK
    assert "preview:" in capsys.readouterr().out and preview.stat().st_size > 0
    summaries = [json.loads(p.read_text()) for p in (out / "_runs").glob("*.json")]
    assert sorted(s["skipped"] for s in summaries) == [0, 3]


def test_ray_job_submit_runs_after_the_readme_install(tmp_path: Path) -> None:
    """The README's cluster path: `ray job submit --working-dir .` against a head with the jobs
    API (what `ray[default]` brings), running a driver that imports the job and joins the cluster."""
    port, dashboard = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    log = (tmp_path / "head.log").open("w")
    # Ports of its own throughout: the session's Ray holds the default ports of its agents.
    agents = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                    "metrics-export-port", "runtime-env-agent-port")]  # fmt: skip
    start = ["ray", "start", "--head", "--block", "--num-cpus", "1", "--port", str(port), "--dashboard-port",
             str(dashboard), "--include-dashboard", "true", "--disable-usage-stats",
             "--temp-dir", temp, *agents]  # fmt: skip
    head = subprocess.Popen(
        start,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # stopped below as a group: `ray stop` would stop every Ray here
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )
    try:
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        env.pop("RAY_ADDRESS", None)
        code = "import ray, pipeline.data.stylize; ray.init(); print('joined', int(ray.cluster_resources()['CPU']))"
        submit = ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", "."]
        deadline, result = time.monotonic() + 180, None
        while time.monotonic() < deadline:  # the head takes a while to answer
            result = subprocess.run(
                [*submit, "--", "python", "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
            )
            if result.returncode == 0 or "joined" in result.stdout:
                break
            time.sleep(2)
        head_log = (tmp_path / "head.log").read_text()[-2000:]
        assert result is not None and result.returncode == 0, (result.stdout + result.stderr)[-3000:] + head_log
        assert "joined 1" in result.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


class _TakesTurns:
    """A model stage's shape: two calls at once, one at a time holding the lock. The first call
    returns at once; every later one waits, inside the lock, for the driver to say (a marker
    file) that it has the first call's rows."""

    def __init__(self, marker: str) -> None:
        import threading

        self.marker, self.turn, self.calls = Path(marker), threading.Lock(), 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        with self.turn:
            self.calls += 1
            seen = self.calls == 1
            deadline = time.monotonic() + 20
            while not seen and time.monotonic() < deadline:
                seen = self.marker.exists()
                time.sleep(0.05)
        return batch.append_column("driver_had_first_rows", pa.array([seen] * batch.num_rows))


def test_each_calls_rows_reach_the_driver_while_the_next_call_runs(ray_cluster: str, tmp_path: Path) -> None:
    """The first output is on the driver as soon as its call is done, not one call later."""
    import ray
    from ray.data import ActorPoolStrategy

    from pipeline.data.cluster import rows_as_made
    from pipeline.data.job import two_calls

    marker = tmp_path / "driver-has-first-rows"
    blocks = [pa.table({"i": [2 * b, 2 * b + 1]}) for b in range(4)]
    actor_args = {"compute": two_calls(ActorPoolStrategy(size=1)), "num_cpus": 1}
    ds = ray.data.from_arrow(blocks).map_batches(
        _TakesTurns, fn_constructor_kwargs={"marker": str(marker)}, batch_size=2, batch_format="pyarrow", **actor_args
    )
    seen = []
    for rows in rows_as_made(ds, actor_args):
        marker.touch()
        seen += rows["driver_had_first_rows"].to_pylist()
    assert len(seen) == 8
    assert all(seen), "a call ended before the rows of the call before it reached the driver"
