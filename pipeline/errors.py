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


# Characters that change how a terminal shows a line, as Python writes them in a string literal:
# C0 and C1 controls (a newline, an escape sequence, 0x9b: CSI in 8 bits), Unicode's line and
# paragraph separators (str.splitlines splits on them) and the bidirectional overrides and
# isolates (which make a name read backwards). A file name may hold any of them.
_CONTROLS = {
    c: repr(chr(c))[1:-1] if c < 0x100 else f"\\u{c:04x}"
    for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun that agrees with it: 1 segment, 2 segments, 0 errors (`plural` where it is not noun + s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def one_line(text: str) -> str:
    """`text` as one line of plain characters: control characters written as escapes (\\n, \\x1b)."""
    return text.translate(_CONTROLS)
