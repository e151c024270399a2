"""A job's progress on the driver, counted in outputs (images) and videos' frames, as rows stream back.

In a terminal: a bar with outputs done of the total, the rate, the time left and the errors so
far. Piped or in a log: one line every few seconds (ADAIN_PROGRESS_EVERY, default 5) in the same
units, and one at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from tqdm import tqdm

from pipeline.data.rows import ERROR, SKIPPED
from pipeline.errors import counted

# tqdm's default, with the rate always in units per second (never seconds per unit).
BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"


class Progress:
    def __init__(
        self,
        total: int,
        what: str = "stylize",
        unit: str = "images",
        stream: TextIO | None = None,
        interactive: bool | None = None,
        every_s: float | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total, self.what, self.unit = total, what, unit
        self.every_s = float(os.environ.get("ADAIN_PROGRESS_EVERY", 5.0)) if every_s is None else every_s
        self.done = self.errors = self.skipped = self._shown = 0
        self.started = self._last_line = time.monotonic()
        interactive = _is_terminal(self.stream) if interactive is None else interactive
        self.bar = None
        if interactive:
            sized = _columns(self.stream) > 0  # a terminal that reports no size would get no bar at all
            bar = {"dynamic_ncols": True} if sized else {"ncols": 100, "nrows": 24}
            unit = f" {unit}"
            self.bar = tqdm(total=total, desc=what, unit=unit, file=self.stream, smoothing=0.1, bar_format=BAR, **bar)

    def grow(self, units: int) -> None:
        """Add to the total: work found as the job goes (a video's frames, once it is probed)."""
        self.total += units
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def update(self, counts: Mapping[str, int], done: int | None = None) -> None:
        """Show the outputs counted so far, by status (the manifest's counts: one row an output), or
        `done` units where a row is not one (a video's frames)."""
        errors, skipped = counts.get(ERROR, 0), counts.get(SKIPPED, 0)
        done = sum(counts.values()) if done is None else done
        changed = (errors, skipped) != (self.errors, self.skipped)
        new, self.done, self.errors, self.skipped = done - self.done, done, errors, skipped
        if self.bar is not None:
            if changed:
                self.bar.set_postfix_str(self._counts(), refresh=False)
            self.bar.update(new)
        elif time.monotonic() - self._last_line >= self.every_s:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self._shown != self.done or not self.done:
            self._line()

    def _counts(self) -> str:
        parts = [counted(self.errors, "error")] if self.errors else []
        return ", ".join([*parts, f"{self.skipped} already there"] if self.skipped else parts)

    def _line(self) -> None:
        self._last_line, self._shown = time.monotonic(), self.done
        elapsed = self._last_line - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = f", {_duration((self.total - self.done) / rate)} left" if rate and self.done < self.total else ""
        counts = self._counts()
        print(
            f"adain: {self.what} {self.done}/{self.total} {self.unit}{share}, {rate:.2f} {self.unit}/s"
            f"{', ' + counts if counts else ''}{left}",
            file=self.stream,
            flush=True,
        )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
