"""File I/O shared by every stage: atomic writes on local disks and object stores.

Local paths are written to a temporary name in the same directory and renamed into place,
so a killed job never leaves a half-written file under the final name. Other paths go
through Beam's ``FileSystems`` (``gs://`` with the gcp extra, ``s3://``, ``hdfs://``), which
publish an object only when its upload completes: the same guarantee on Dataflow, Spark or
Flink workers.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import socket
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
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def open_read(path: str):
    """A binary file object for reading a local path or any Beam/fsspec URL."""
    if is_local(path):
        return open(local_path(path), "rb")
    try:
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.open(path, compression_type="uncompressed")
    except ValueError:  # a scheme Beam does not know: try fsspec
        return fsspec.open(path, "rb").open()


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(local_path(path), exist_ok=True)


def _literal_dirs(pattern: str) -> str:
    """``pattern`` with its leading components that exist as named escaped: a data dir called
    ``runs [v2]`` is that directory, not a character class."""
    import glob as _glob

    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if not _glob.has_magic(part):
            continue
        literal = "/".join(parts[: i + 1])
        if not os.path.exists(literal):
            break
        parts[i] = _glob.escape(part)
    return "/".join(parts)


def glob(pattern: str) -> list[str]:
    if is_local(pattern):
        import glob as _glob

        return sorted(_glob.glob(_literal_dirs(local_path(pattern)), recursive=True))
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


# Temp names carry their owner: ``.tmp-<name>-<host tag>-<pid>-<random>`` (DuckDB may add ``.wal``),
# so clean-up can tell a dead writer's temps from a live one's, also across hosts sharing a disk.
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_OWNER = re.compile(r"-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}(?:\.wal)?$")


def temp_path(path: str) -> str:
    """A fresh temp name next to local ``path`` that names this host and process as its owner."""
    d, base = os.path.split(local_path(path))
    return os.path.join(d, f".tmp-{base}-{HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:  # with procfs: it just exited; without (macOS): kill(0) said it runs
        return not os.path.isdir("/proc/self")
    except (OSError, IndexError):
        return True


def temp_owner(name: str) -> tuple[str, int] | None:
    """(host tag, pid) of a temp file name written by :func:`temp_path`; None for other names."""
    m = _TEMP_OWNER.search(name) if name.startswith(".tmp-") else None
    return (m.group(1), int(m.group(2))) if m else None


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open ``path`` for writing; it appears under its name only if the block succeeds."""
    if is_local(path):
        path = local_path(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = temp_path(path)
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
        from apache_beam.io.filesystems import FileSystems

        f = FileSystems.create(path, compression_type="uncompressed")
        try:
            yield f
        finally:
            f.close()


def write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def write_json(path: str, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str):
    with open_read(path) as f:
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
        # use_threads=False: pyarrow's threaded reader over a Python file object can abort the
        # interpreter at exit ("terminate called without an active exception")
        if is_local(p):
            tables.append(pq.read_table(local_path(p), columns=columns, use_threads=False))
        else:
            with open_read(p) as f:
                tables.append(pq.read_table(pa.BufferReader(f.read()), columns=columns, use_threads=False))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def remove_stale_temps(root: str) -> int:
    """Delete the temp files of atomic writes (``.tmp-*``) under ``root`` whose owner is dead: a
    process of this host that no longer runs. A resumed run then ends with exactly the files a
    clean run writes, and a live writer's temps are never touched. Temps of other hosts or of
    unknown owners (an older naming) are left, with a warning. Local paths only (object stores have no
    partial writes). Returns how many were removed."""
    if not is_local(root) or not os.path.isdir(local_path(root)):
        return 0
    n, kept = 0, []
    for dirpath, _, files in os.walk(local_path(root)):
        for f in files:
            if not f.startswith(".tmp-"):
                continue
            owner = temp_owner(f)
            path = os.path.join(dirpath, f)
            if owner and owner[0] == HOST_TAG and not pid_alive(owner[1]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    n += 1
            elif not (owner and owner[0] == HOST_TAG):
                kept.append(path)
    if kept:
        logging.getLogger(__name__).warning(
            "left %d temp file(s) whose owner cannot be checked from this host (e.g. %s)", len(kept), kept[0])
    return n
