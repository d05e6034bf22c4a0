"""The 128-bit sample uid and DataComp's uid codec.

A uid is 32 lowercase hex characters (128 bits). DataComp stores uid subsets as a sorted
numpy array of dtype ``u8,u8`` (high 64 bits, low 64 bits) and matches by binary search;
``encode`` / ``decode`` / ``contains`` reproduce that exactly so subset files written by
DataComp's own tools load here and the other way round.

A sample's uid is the md5 of its normalised image URL and its alt text (the pair is the
sample, as in DataComp, where the same URL with another caption is another sample).
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

UID_DTYPE = np.dtype("u8,u8")


def make_uid(url: str, text: str) -> str:
    return hashlib.md5(f"{url}\x00{text}".encode("utf-8", "surrogatepass")).hexdigest()


def is_uid(value: str) -> bool:
    if not isinstance(value, str) or len(value) != 32:
        return False
    try:
        int(value, 16)
    except ValueError:
        return False
    return value == value.lower()


def encode(uids: Iterable[str], sort: bool = True) -> np.ndarray:
    """Hex uids -> ``u8,u8`` array (sorted by default, as DataComp's subset files are)."""
    uids = list(uids)
    for u in uids:
        if not is_uid(u):
            raise ValueError(f"not a 32-hex-character uid: {u!r}")
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], dtype=UID_DTYPE)
    if sort:
        arr.sort()
    return arr


def decode(arr: np.ndarray) -> list[str]:
    """``u8,u8`` array -> hex uids, in array order."""
    if arr.dtype != UID_DTYPE:
        raise ValueError(f"expected dtype u8,u8, got {arr.dtype}")
    return [f"{int(hi):016x}{int(lo):016x}" for hi, lo in arr.tolist()]


def contains(sorted_arr: np.ndarray, uids: Iterable[str]) -> np.ndarray:
    """Boolean mask: which ``uids`` are in ``sorted_arr`` (binary search, DataComp semantics)."""
    query = encode(uids, sort=False)
    if len(sorted_arr) == 0:
        return np.zeros(len(query), dtype=bool)
    idx = np.searchsorted(sorted_arr, query)
    idx = np.minimum(idx, len(sorted_arr) - 1)
    return sorted_arr[idx] == query


def counts(sorted_arr: np.ndarray, query: np.ndarray) -> np.ndarray:
    """How often each uid of ``query`` (a ``u8,u8`` array) occurs in ``sorted_arr`` (binary
    search: ``sorted_arr`` may be a memory map of a file larger than memory)."""
    if len(sorted_arr) == 0 or len(query) == 0:
        return np.zeros(len(query), dtype=np.int64)
    return (np.searchsorted(sorted_arr, query, side="right") - np.searchsorted(sorted_arr, query, side="left")).astype(np.int64)


def is_sorted(arr: np.ndarray, chunk: int = 1 << 24) -> bool:
    """Whether a ``u8,u8`` array is in DataComp's order (high word, then low word), checked in
    chunks so a memory-mapped file is streamed, not loaded."""
    for i in range(0, max(len(arr) - 1, 0), chunk):
        a = arr[i:i + chunk + 1]
        hi, lo = a["f0"], a["f1"]
        if np.any((hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] < lo[:-1]))):
            return False
    return True


def load(path: str) -> np.ndarray:
    """Load a DataComp subset file (``.npy`` of ``u8,u8``), sorting it if needed."""
    import io

    from pipelines.io import open_read

    with open_read(path) as f:
        arr = np.load(io.BytesIO(f.read()))
    if arr.dtype != UID_DTYPE:
        raise ValueError(f"{path}: expected a DataComp uid array of dtype u8,u8, got {arr.dtype}")
    ordered = np.sort(arr)
    if not np.array_equal(ordered, arr):
        arr = ordered
    return arr
