"""Errors a user can act on. The CLI prints their message as one line, with no traceback."""


class AdainError(Exception):
    """An expected failure: the message says what failed and what to do about it."""


class ConfigError(AdainError):
    """A bad flag or config value."""


class ImageError(AdainError):
    """An input that is not a usable image (corrupt, truncated, empty, too large)."""


class VideoError(ImageError):
    """An input that is not a usable video (no video stream, no frames, undecodable, truncated, too large)."""


class StorageError(AdainError):
    """A URI that cannot be read or written (missing bucket, no permission, not found)."""


class WeightsError(AdainError):
    """Weights that cannot be found, downloaded, verified or loaded."""


class DeviceError(AdainError):
    """A device that is asked for but not there (no CUDA GPU on this machine)."""


class ClusterError(AdainError):
    """A Ray cluster that cannot be reached or joined."""


def describe(exc: BaseException) -> str:
    """One line about a failure: an expected one's own message; anything else (a library's
    TypeError on odd tags, a MemoryError) by its type and the first line of its message."""
    if isinstance(exc, AdainError):
        return str(exc)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# Control characters, as Python writes them in a string literal: a file name may hold a newline or
# a terminal's escape sequence, which must not split a one-line message or reach the terminal.
_CONTROLS = {c: repr(chr(c))[1:-1] for c in (*range(0x20), 0x7F)}


def one_line(text: str) -> str:
    """`text` as one line of plain characters: control characters written as escapes (\\n, \\x1b)."""
    return text.translate(_CONTROLS)
