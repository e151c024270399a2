"""Deterministic, safe output keys.

Input keys come from listings and list files a user does not fully control; whatever they
contain ('..', absolute paths, empty segments, backslashes), the key derived from them
stays inside the output prefix.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

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


def output_stems(rels: pa.ChunkedArray | Sequence[str]) -> pa.ChunkedArray:
    """Each input's output name without extension, from its safe relative path (`safe_relpath`,
    which the caller has made already): the path minus the extension, keeping the extension in
    the name (`a_png`) where two inputs would otherwise share one (`a.jpg`, `a.png`).

    Works a chunk at a time and finds clashes with Arrow, so ten million inputs never
    become ten million Python strings at once."""
    chunks = rels.chunks if isinstance(rels, pa.ChunkedArray) else [pa.array(rels, pa.string())]
    stems = pa.chunked_array(
        [pa.array([posixpath.splitext(r)[0] for r in c.to_pylist()], pa.string()) for c in chunks],
        pa.string(),
    )
    counts = pc.value_counts(stems)
    shared = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(shared) == 0:
        return stems
    fixed = []
    for chunk, stem_chunk in zip(chunks, stems.chunks, strict=True):
        clash = pc.is_in(stem_chunk, value_set=shared).to_pylist()
        names = zip(stem_chunk.to_pylist(), chunk.to_pylist(), clash, strict=True)
        fixed.append(
            pa.array([f"{s}_{posixpath.splitext(r)[1].lstrip('.')}" if c else s for s, r, c in names], pa.string())
        )
    return pa.chunked_array(fixed, pa.string())


def output_key(output: str, style_id: str, stem: str, fmt: str) -> str:
    """OUTPUT/STYLE/STEM.FMT, always inside OUTPUT."""
    return f"{output.rstrip('/')}/{slug(style_id)}/{safe_relpath(stem)}.{fmt}"


def augmented_key(output: str, style_id: str, stem: str, fmt: str) -> str:
    """OUTPUT/STEM__STYLE.FMT: the input's folders kept (class folders stay class folders),
    the style in the file name."""
    return f"{output.rstrip('/')}/{safe_relpath(stem)}__{slug(style_id)}.{fmt}"
