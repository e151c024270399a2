"""Deterministic, safe output keys.

Input keys come from listings and list files a user does not fully control; whatever they
contain ('..', absolute paths, empty segments, backslashes), the key derived from them
stays inside the output prefix. Whatever their length, the key fits where it is written
(`Room`): a file name of at most 255 bytes, a whole key of at most 1024 (object stores) or
4095 (local paths), names too long cut to a head and a hash of what they stood for.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import posixpath
import re
from collections.abc import Sequence
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ConfigError

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")

SEGMENT_BYTES = 255  # a file or folder name, on every local filesystem in use
STYLE_BYTES = 80  # a style's slug at most: room for a head and unique_names' longest suffix (65 bytes)
_KEY_BYTES = {"s3": 1024, "gs": 1024, "gcs": 1024}  # an object's whole key, below its bucket
_PATH_BYTES = 4095  # a local path (PATH_MAX less its NUL)
_FORMAT_BYTES = 5  # '.' and the longest extension an output takes ('.jpeg', '.webp')
_HASH_DIGITS = 16  # of a name cut short: the hash of the whole name
_PARTS_BYTES = 64  # what a video's parts add to its output's path (`video_job.part_uri`: _parts/, index, frames, .json)


class Room(NamedTuple):
    """The bytes an output stem (`output_stems`) may take, once the per-row naming has added
    its part: its file name, each of its folders, and the whole stem, each folder counted one
    byte more (the '_' `_folders_apart` may add)."""

    name: int
    folder: int
    path: int


def output_room(output: str, augment: bool) -> Room:
    """The room left to stems below `output`: by `output_key` (OUTPUT/STYLE/STEM.FMT, and a
    video's parts) or, with `augment`, by `augmented_key` (OUTPUT/_STEM__STYLE-HASH8.FMT)."""
    kind = output.split("://", 1)[0].lower() if "://" in output else "file"
    if kind in _KEY_BYTES:
        prefix, limit = output.split("://", 1)[1].rstrip("/").partition("/")[2], _KEY_BYTES[kind]
    else:
        path = output[len("file://") :] if output.startswith("file://") else output
        prefix, limit = os.path.abspath(os.path.expanduser(path)), _PATH_BYTES
    left = limit - (_bytes(prefix) + 1 if prefix else 0) - _FORMAT_BYTES
    if augment:  # a first folder's '_' more, and __STYLE-HASH8 after the name
        style = 2 + STYLE_BYTES + 9
        room = Room(SEGMENT_BYTES - style - _FORMAT_BYTES, SEGMENT_BYTES - 2, left - 1 - style)
    else:  # STYLE/ before the stem, and the parts' folder beside it
        room = Room(SEGMENT_BYTES - _FORMAT_BYTES, SEGMENT_BYTES - 1, left - STYLE_BYTES - 1 - _PARTS_BYTES)
    if room.path < 2 * STYLE_BYTES:  # room for a head and unique_names' longest suffix
        raise ConfigError(
            f"{output}: the output prefix leaves no room for output names ({limit} bytes a key); use a shorter one"
        )
    return room


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _head(text: str, size: int) -> str:
    """The longest start of `text` of at most `size` bytes in UTF-8, in whole characters."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= size:
        return text
    end = max(size, 0)
    while end > 0 and encoded[end] & 0xC0 == 0x80:  # a continuation byte: the character began before
        end -= 1
    return encoded[:end].decode("utf-8", "surrogatepass")


def _shortened(name: str, size: int, whole: str | None = None) -> str:
    """`name` where it takes at most `size` bytes; else its head, '-' and a hash of `whole` (by
    default `name`): what it stood for tells shortened names apart, `unique_names` the rest."""
    if _bytes(name) <= size:
        return name
    return f"{_head(name, size - _HASH_DIGITS - 1)}-{_short_hash(name if whole is None else whole, _HASH_DIGITS)}"


def _path_bytes(parts: Sequence[str]) -> int:
    """The bytes of the stem of `parts`, each folder one more for the '_' `_folders_apart` may add."""
    return sum(_bytes(part) for part in parts) + 2 * (len(parts) - 1)


def fitted(stem: str, room: Room | None) -> str:
    """`stem` as it is where it fits `room` (or there is none); else each name too long shortened
    (`_shortened`), and a stem still too long for the whole key one file name: the head of its
    own and a hash of the whole stem."""
    if room is None:
        return stem
    *folders, name = stem.split("/")
    parts = [*(_shortened(folder, room.folder) for folder in folders), _shortened(name, room.name)]
    if _path_bytes(parts) <= room.path:
        return "/".join(parts)
    return _shortened(name, min(room.name, room.path), stem)


def fitted_stems(stems: pa.ChunkedArray, room: Room | None) -> pa.ChunkedArray:
    """`fitted` of each stem; in Arrow all but those longer than the shortest room."""
    if room is None:
        return stems
    # _path_bytes: a stem's bytes and one more a folder; no shorter stem has anything to shorten.
    longer = pc.greater(pc.add(pc.binary_length(stems), pc.count_substring(stems, "/")), min(room))
    if not pc.any(longer).as_py():
        return stems
    chunks, start = [], 0  # chunk by chunk: ten million stems may hold more than a string array's 2 GiB
    for chunk in stems.chunks:
        mask, start = longer.slice(start, len(chunk)).combine_chunks(), start + len(chunk)
        values = pa.array([fitted(stem, room) for stem in chunk.filter(mask).to_pylist()], pa.string())
        chunks.append(pc.replace_with_mask(chunk, mask, values) if len(values) else chunk)
    return pa.chunked_array(chunks, pa.string())


def _suffixed(name: str, suffix: str, room: Room | None) -> str:
    """`name` and `suffix` after it, whole, its file name's head cut to fit `room`; where its
    folders leave too little room, one file name."""
    if room is None:
        return f"{name}{suffix}"
    *folders, last = name.split("/")
    size = min(room.name, room.path - _path_bytes([*folders, ""])) - _bytes(suffix)
    if size < 0:
        folders, size = [], min(room.name, room.path) - _bytes(suffix)
    return "/".join([*folders, _head(last, size) + suffix])


def safe_relpath(path: str) -> str:
    """A relative path with no way out: '.', '..' and empty segments are dropped ('_' if none is left).
    Paths that meet this way are told apart by `unique_names`."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def slug(name: str) -> str:
    """A name usable as one path segment (style ids), of at most STYLE_BYTES: a longer one is
    cut to its head and a hash of the whole `name` (`_shortened`). A slug is its own slug."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "style"
    return _shortened(cleaned, STYLE_BYTES, name)


STYLE_ROOM = Room(STYLE_BYTES, STYLE_BYTES, STYLE_BYTES)  # slugs renamed apart (`unique_names`) stay slugs


def sample_name(key: str, style_id: str) -> str:
    """A WebDataset sample key, KEY__STYLE (`_joined`): loaders cut a name at its first dot, so dots
    become '_', and a name that had any takes its short hash, to stay apart from one spelled with '_'
    (`a.b` and `a_b` are two samples)."""
    name = _joined(safe_relpath(key), style_id)
    return name if "." not in name else f"{name.replace('.', '_')}-{_short_hash(name, 8)}"


def _joined(rel: str, style_id: str) -> str:
    """REL__STYLE, where it reads one way only; else REL__STYLE-HASH of the two: `a` with style
    `b__c` and `a__b` with style `c` would both be `a__b__c`. A slug has no '_' at either end, so
    a file name without '__' and not ending in '_' meets the style's slug at one '__' only."""
    style, name = slug(style_id), rel.rsplit("/", 1)[-1]
    if "__" in style or "__" in name or name.endswith("_"):  # then never a plain one: two '__'s, or '___'
        return f"{rel}__{style}-{_short_hash(rel + chr(0) + style, 8)}"
    return f"{rel}__{style}"


# Every extension an output file takes: the image formats' (codec.FORMATS) and the videos' .mp4.
_OUTPUT_FILE_LIKE = re.compile(r"\.(?:jpe?g|png|webp|mp4)_*$", re.IGNORECASE)


def _folders_apart(rel: str) -> str:
    """`rel` with each folder unlike any output file: a folder named as one (`x.jpg`, in any case)
    takes one '_' more, as do those named so already (`x.jpg_`), which keeps them distinct. Input
    `x.jpg/y.png` would otherwise have its output in the folder `x.jpg`, which is input `x.png`'s output."""
    *folders, name = rel.split("/")
    return "/".join([*(f"{f}_" if _OUTPUT_FILE_LIKE.search(f) else f for f in folders), name])


def relative_to(uri: str, root: str) -> str:
    """`uri`'s path below `root` when it lies under it, else its path inside its bucket or filesystem."""
    root = root.rstrip("/") + "/"
    if uri.startswith(root):
        return uri[len(root) :]
    path = uri.split("://", 1)[1] if "://" in uri else uri
    return path.split("/", 1)[1] if "://" in uri and "/" in path else path


def _short_hash(key: str, digits: int) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:digits]


def folded(names: Sequence[str]) -> list[str]:
    """Names lower-cased as Arrow's `utf8_lower` does, for every comparison of names here:
    Python's `str.lower` differs on some ('İ' -> 'i̇', not 'i'), and two foldings would let
    renamed names meet again."""
    return pc.utf8_lower(pa.array(list(names), pa.string())).to_pylist()


def unique_names(
    names: Sequence[str], keys: Sequence[str], taken: set[str] | None = None, room: Room | None = None
) -> list[str]:
    """`names` made distinct, compared case-insensitively (`folded`: outputs may land on a
    filesystem that ignores case): each name that several keys share gets '-' and a short hash of its own key,
    longer until all are distinct (8, 16, 64 hex digits, then 64 of the key and the round, for
    names crafted to meet those); with `room`, the hash is kept whole and the name before it cut
    to fit (`_suffixed`). A pure function of (names, keys, room): the same on every run and
    machine. The keys must be distinct: they are what tells the items apart. `taken`, when given,
    gets every name (`folded`) given on the way (see `output_stems`)."""
    out = list(names)
    for rounds in itertools.count():
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(folded(out)):
            groups.setdefault(name, []).append(i)
        clashes = [group for group in groups.values() if len(group) > 1]
        if any(len({keys[i] for i in group}) < len(group) for group in clashes):  # would never end
            raise ValueError("unique_names: items share their names and their keys")
        shared = [i for group in clashes for i in group]
        if not shared:
            return out
        # Ends: names from round 2 end in hashes of distinct (key, round)s; each clash moves an item off an older name.
        for i in shared:
            out[i] = _suffixed(names[i], f"-{_round_hash(keys[i], rounds)}", room)
        _take(taken, [out[i] for i in shared])
    raise AssertionError("unreachable")


def _round_hash(key: str, rounds: int) -> str:
    """The suffix `unique_names` gives in its round `rounds` (from 0)."""
    if rounds < 3:
        return _short_hash(key, (8, 16, 64)[rounds])
    return _short_hash(f"{key}\0{rounds}", 64)  # str(rounds) has no NUL: one (key, round) per string


# A path and its extension: the last dot of the file name and what follows, unless the name is
# only dots before it (".bashrc" has none), as posixpath.splitext has it.
_EXTENSION = r"^((?:.*/)?\.*[^/.][^/]*?)\.[^./]*$"


def plain_stems(rels: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each path less its extension, as posixpath.splitext cuts it, in Arrow: the output names
    of inputs whose names meet nobody's."""
    return pc.replace_substring_regex(rels, _EXTENSION, r"\1")


def output_stems(
    rels: pa.ChunkedArray | Sequence[str],
    keys: pa.ChunkedArray | Sequence[str] | None = None,
    taken: set[str] | None = None,
    room: Room | None = None,
) -> pa.ChunkedArray:
    """Each input's output name without extension, from its safe relative path (`safe_relpath`,
    which the caller has made already), distinct for distinct inputs: the path minus the
    extension; where two inputs would share one, the extension kept in the name (`a.jpg`,
    `a.png` -> `a_jpg`, `a_png`); where names still meet (`a_png.jpg`, the same path in two
    buckets, `d/../y.jpg` beside `d/y.jpg`, case), `unique_names` with the inputs' `keys` (their
    URIs; by default the paths themselves).

    With `room` (`output_room`), every name fits it: each one too long `fitted` before names are
    compared, so that one crafted to equal a shortened name meets it and both are told apart as
    above, whose renamings fit too. Names that fit are as they are without `room`.

    Clashes are found with Arrow, so ten million inputs become Python strings only when some
    of them clash. `taken`, when given, gets every name (`folded`) a renamed input held on
    the way: only inputs whose plain stem is one of those can be touched by the renaming.
    """
    rels = _chunked(rels)
    plain = plain_stems(rels)
    stems = fitted_stems(plain, room)
    if len(_clashing(stems)) == 0:
        return stems
    names = stems.to_pylist()
    rows = _rows_of(stems, _clashing(stems))
    for i in rows:
        extension = posixpath.splitext(rels[i].as_py())[1].lstrip(".")
        names[i] = fitted(f"{plain[i].as_py()}_{extension}", room) if extension else names[i]
    _take(taken, [names[i] for i in rows])
    named, keys = _chunked(names), rels if keys is None else _chunked(keys)
    for _ in range(4):  # a name made unique may meet one that was not: then that one too
        clashing = _clashing(named)
        if len(clashing) == 0:
            return named
        rows = _rows_of(named, clashing)
        renamed = unique_names([names[i] for i in rows], keys.take(rows).to_pylist(), room=room)
        for i, name in zip(rows, renamed, strict=True):
            names[i] = name
        _take(taken, [names[i] for i in rows])
        named = _chunked(names)
    # Names crafted to meet each renaming (`x_jpg-H.jpg`, `x_jpg-H-H.jpg`, ...): the whole list through
    # unique_names, which always ends; names that no longer meet come back as they are.
    return _chunked(unique_names(names, keys.to_pylist(), taken, room))


def _take(taken: set[str] | None, names: list[str]) -> None:
    if taken is not None:
        taken.update(folded(names))


def _chunked(values: pa.ChunkedArray | Sequence[str]) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        return values
    return pa.chunked_array([pa.array(list(values), pa.string())], pa.string())


def _rows_of(names: pa.ChunkedArray, clashing: pa.Array) -> list[int]:
    return pc.indices_nonzero(pc.is_in(pc.utf8_lower(names), value_set=clashing)).to_pylist()


def _clashing(names: pa.ChunkedArray) -> pa.Array:
    """The (lower-cased) names that more than one row has."""
    counts = pc.value_counts(pc.utf8_lower(names))
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1))


def output_key(output: str, style_id: str, stem: str, fmt: str) -> str:
    """OUTPUT/STYLE/STEM.FMT, always inside OUTPUT; no output folder named as an output (`_folders_apart`).
    It fits where stems fit `output_room(OUTPUT, augment=False)` and `slug` caps the style."""
    return f"{output.rstrip('/')}/{slug(style_id)}/{_folders_apart(safe_relpath(stem))}.{fmt}"


def augmented_key(output: str, style_id: str, stem: str, fmt: str) -> str:
    """OUTPUT/STEM__STYLE.FMT: the input's folders kept (class folders stay class folders),
    the style in the file name. A first folder named from '_' on gets one '_' more (`_a/x` ->
    `__a/x`, `__a/x` -> `___a/x`: still distinct), so that no output lands among the run's own
    `_manifest/`, `_runs/` and `_state/`. No output folder is named as an output (`_folders_apart`),
    and STEM__STYLE reads one way only (`_joined`). It fits where stems fit `output_room(OUTPUT,
    augment=True)` and `slug` caps the style."""
    rel = _folders_apart(safe_relpath(stem))
    if rel.startswith("_") and "/" in rel:
        rel = f"_{rel}"
    return f"{output.rstrip('/')}/{_joined(rel, style_id)}.{fmt}"
