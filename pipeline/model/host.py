"""The host process that runs a model on the CPU: how many threads it computes on, how its memory allocator behaves."""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap, and are reused there
_TRIM_THRESHOLD = 2**31 - 1  # never give the heap's top back to the kernel

# The environment of a process whose model runs on threads other than its main one (a model
# actor taking calls on a thread pool, a Ray Train worker's training thread). glibc gives such a
# thread an arena of its own, whose heaps hold at most 64 MB: a larger block is mapped afresh
# whatever the mmap threshold, and unmapped when freed, which undoes `reuse_freed_memory`. With
# one arena every thread allocates from the main heap. Read once, when the process starts.
ONE_ARENA = {"MALLOC_ARENA_MAX": "1"}


@functools.cache
def reuse_freed_memory() -> bool:
    """Keep freed activations in the process for the next forward pass, as PyTorch's CUDA
    allocator does on GPUs, instead of handing them back to the kernel.

    By default glibc maps every block over its mmap threshold (at most 32 MB) afresh and
    unmaps it when freed, and trims the heap's top, so each forward pass faulted its
    activations in again page by page (the README's Performance section has the figures).
    The cost: the process keeps its peak memory. Process-wide, applied once; it holds on threads
    other than the main one only in a process started with `ONE_ARENA`. Returns whether it
    applied (glibc only; elsewhere the allocator is left as it is).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        log.debug("no mallopt (not glibc): the allocator is left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def set_threads(threads: int | None) -> None:
    """In a model actor: use exactly the cores it was sized for (None: torch's default)."""
    if threads is not None:
        import torch  # here: the jobs' torch-free stages read `ONE_ARENA` from this module

        torch.set_num_threads(threads)
