"""File I/O shared by every stage: atomic writes on local disks and object stores.

Local paths are written to a temporary name in the same directory and renamed into place,
so a killed job never leaves a half-written file under the final name. Object stores
(``gs://``, ``s3://`` through fsspec) publish an object only when its upload completes, which
gives the same guarantee.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/")] + [p.strip("/") for p in rest])


def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(local_path(path))
    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(local_path(path), exist_ok=True)


def glob(pattern: str) -> list[str]:
    fs, p = fsspec.core.url_to_fs(pattern)
    found = sorted(fs.glob(p))
    if is_local(pattern):
        return found
    proto = pattern.split("://", 1)[0]
    return [f"{proto}://{f}" for f in found]


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open ``path`` for writing; it appears under its name only if the block succeeds."""
    if is_local(path):
        path = local_path(path)
        d = os.path.dirname(path) or "."
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".tmp-{os.path.basename(path)}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        with fsspec.open(path, mode) as f:
            yield f


def write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str):
    with fsspec.open(path, "rb") as f:
        return json.load(f)


def write_parquet(path: str, table: pa.Table) -> None:
    """Deterministic Parquet: same rows in, same bytes out (no timestamps in the footer)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd", write_statistics=True, store_schema=True)
    write_bytes(path, buf.getvalue().to_pybytes())


def read_parquet(paths: list[str] | str, columns: list[str] | None = None) -> pa.Table:
    if isinstance(paths, str):
        paths = glob(paths) if any(c in paths for c in "*?[") else [paths]
    tables = []
    for p in paths:
        with fsspec.open(p, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")
