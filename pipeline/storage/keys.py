"""Deterministic, safe output keys.

Input keys come from listings and list files a user does not fully control; whatever they
contain ('..', absolute paths, empty segments, backslashes), the key derived from them
stays inside the output prefix.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Sequence

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_relpath(path: str) -> str:
    """A relative path with no way out: '.', '..' and empty segments are dropped."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"{path!r} has no usable path segments")
    return "/".join(parts)


def slug(name: str) -> str:
    """A name usable as one path segment (style ids)."""
    cleaned = _UNSAFE.sub("_", name).strip("._")
    return cleaned or "style"


def relative_to(uri: str, root: str) -> str:
    """`uri`'s path below `root` when it lies under it, else its path inside its bucket or filesystem."""
    root = root.rstrip("/") + "/"
    if uri.startswith(root):
        return uri[len(root) :]
    path = uri.split("://", 1)[1] if "://" in uri else uri
    return path.split("/", 1)[1] if "://" in uri and "/" in path else path


def output_stems(rels: Sequence[str]) -> list[str]:
    """Each input's output name without extension: its safe relative path minus the
    extension, keeping the extension in the name (`a_png`) where two inputs would
    otherwise share one (`a.jpg`, `a.png`)."""
    stems = [posixpath.splitext(safe_relpath(rel))[0] for rel in rels]
    counts = Counter(stems)
    return [
        stem if counts[stem] == 1 else f"{stem}_{posixpath.splitext(rel)[1].lstrip('.')}"
        for stem, rel in zip(stems, rels, strict=True)
    ]


def output_key(output: str, style_id: str, stem: str, fmt: str) -> str:
    """OUTPUT/STYLE/STEM.FMT, always inside OUTPUT."""
    return f"{output.rstrip('/')}/{slug(style_id)}/{safe_relpath(stem)}.{fmt}"


def augmented_key(output: str, style_id: str, stem: str, fmt: str) -> str:
    """OUTPUT/STEM__STYLE.FMT: the input's folders kept (class folders stay class folders),
    the style in the file name."""
    return f"{output.rstrip('/')}/{safe_relpath(stem)}__{slug(style_id)}.{fmt}"
