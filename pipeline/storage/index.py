"""What is under a prefix, listed once: the index a run's plan asks "is this output there?".

Built on the driver from one streamed listing (`listing.iter_files`), it answers for any URI
without a request. It is three NumPy arrays, so `ray.put` shares it with every task of a node
without a copy (NumPy arrays leave Ray's object store zero-copy): 24 bytes per object listed,
whatever its name's length. Names are kept as 128-bit hashes: two names share one with a
probability of about n^2 / 2^129, nil at any count of objects a bucket can hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.storage.listing import Page, iter_files

_UNKNOWN = -1  # no modification time reported: the object counts as written at any time


def name_hashes(rels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each name's 128-bit hash as two uint64 arrays (high, low)."""
    digests = b"".join(hashlib.blake2b(rel.encode("utf-8", "surrogatepass"), digest_size=16).digest() for rel in rels)
    both = np.frombuffer(digests, dtype=">u8").astype(np.uint64).reshape(-1, 2)
    return both[:, 0].copy(), both[:, 1].copy()


@dataclass(frozen=True)
class ObjectIndex:
    """The objects under `prefix`: hashes of their paths below it, sorted, and their mtime_ns."""

    prefix: str
    high: np.ndarray
    low: np.ndarray
    mtimes: np.ndarray

    @classmethod
    def build(cls, prefix: str, extensions: tuple[str, ...]) -> ObjectIndex:
        """List `prefix` once (only names ending in `extensions`), a page at a time."""
        return cls.from_pages(prefix, iter_files(prefix, extensions))

    @classmethod
    def from_pages(cls, prefix: str, pages: Iterable[Page]) -> ObjectIndex:
        """The index of a listing's pages: (paths below `prefix`, their mtime_ns)."""
        highs, lows, mtimes = [], [], []
        for rels, stamps in pages:
            high, low = name_hashes(rels)
            highs.append(high)
            lows.append(low)
            mtimes.append(np.array([_UNKNOWN if t is None else t for t in stamps], np.int64))
        columns = [np.concatenate(parts) if parts else np.empty(0, kind) for parts, kind in
                   ((highs, np.uint64), (lows, np.uint64), (mtimes, np.int64))]  # fmt: skip
        del highs, lows, mtimes
        order = np.lexsort((columns[1], columns[0]))
        for i, column in enumerate(columns):  # one column reordered at a time: memory for one copy
            columns[i] = column[order]
            del column
        return cls(prefix.rstrip("/"), *columns)

    def __len__(self) -> int:
        return len(self.high)

    def written_since(self, uris: list[str], since_ns: int | None) -> list[bool]:
        """Whether each URI was listed, written no earlier than `since_ns` (None: ever)."""
        base = self.prefix + "/"
        inside = [uri[len(base) :] if uri.startswith(base) else None for uri in uris]
        found = [False] * len(uris)
        rows = [i for i, rel in enumerate(inside) if rel is not None]
        if not rows or not len(self):
            return found
        high, low = name_hashes([inside[i] for i in rows])
        at = np.searchsorted(self.high, high)
        for i, h, lo, k in zip(rows, high, low, at, strict=True):
            while k < len(self.high) and self.high[k] == h:  # equal highs: next to each other
                if self.low[k] == lo:
                    mtime = int(self.mtimes[k])
                    found[i] = since_ns is None or mtime == _UNKNOWN or mtime >= since_ns
                    break
                k += 1
        return found
