"""glibc malloc tuning for the pipeline's processes (no-ops elsewhere)."""
from __future__ import annotations


def _mallopt(param: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (OSError, AttributeError):  # not glibc
        pass


def return_big_blocks() -> None:
    """In the pipeline's process: arrays of 1 MiB and more always get their own ``mmap`` and go
    back to the system when freed. (By default glibc raises that threshold after the first free, and
    the pipeline threads then fragment their heaps, so the peak RSS creeps up with the batches.)"""
    _mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; a fixed value also disables the dynamic raise


def keep_heap_pages() -> None:
    """In a worker process: serve multi-MB arrays from a heap that is never trimmed.

    Every image allocates the same few large arrays; by default each is a fresh ``mmap`` whose pages
    fault in one by one (about a millisecond per 8 MB). The worker's footprint stays bounded by its
    largest image.
    """
    _mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    _mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
