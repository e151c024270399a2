"""What the `adain` process prints: its own lines, and none of Ray's native log lines unless --verbose.

Ray's C++ core writes its log lines straight to file descriptor 2, past Python's logging (an
error-level line about every actor pool's constructor arguments, GCS connection retries). The
filter points descriptor 2 at a pipe whose lines are relayed to the terminal unless they are such
a line; Python's own `sys.stderr` (our messages, progress bars, warnings, tracebacks) keeps
writing to the terminal directly, so nothing of ours waits on the relay.
"""

from __future__ import annotations

import os
import re
import select
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# "[2026-12-01 12:09:07,255 E 31652 31652] core_worker.cc:2465: ...": Ray's native log format.
RAY_NATIVE_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z] \d+ \d+\] ")


def keep(line: bytes) -> bool:
    return RAY_NATIVE_LINE.match(line) is None


@contextmanager
def native_logs_filtered() -> Iterator[None]:
    """Within the block, lines written to descriptor 2 that are Ray's native log lines are dropped."""
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        read, write = os.pipe()
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    saved_stderr = sys.stderr
    if _on_descriptor_2(saved_stderr):  # else Python's stderr is captured elsewhere already: left so
        sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=saved_stderr.encoding, errors="replace")  # noqa: SIM115
    os.dup2(write, 2)
    os.close(write)
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(read, terminal, stop), name="adain-stderr", daemon=True)
    relay.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # processes Ray started may hold the pipe open: no end of file to wait for
        stop.set()
        relay.join(timeout=2.0)
        if sys.stderr is not saved_stderr:
            sys.stderr.close()
            sys.stderr = saved_stderr
        os.close(terminal)


def _on_descriptor_2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _relay(read: int, terminal: int, stop: threading.Event) -> None:
    pending = b""
    while True:
        ready, _, _ = select.select([read], [], [], 0.0 if stop.is_set() else 0.2)
        chunk = os.read(read, 65536) if ready else b""
        if not chunk and (stop.is_set() or ready):  # drained after the block, or every writer gone
            break
        *lines, pending = (pending + chunk).split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if keep(line))
        if kept:
            os.write(terminal, kept)
    if pending and keep(pending):
        os.write(terminal, pending)
    os.close(read)
