"""File I/O shared by every stage: one layer for every read and write of a data dir, for local
paths, ``gs://`` and ``s3://`` (docs/storage.md).

One choice per operation: local paths use the OS (``open``, ``os.replace``, ``glob``); every other
URL goes through fsspec (``gcsfs`` for ``gs://``, ``s3fs`` for ``s3://``, any other fsspec
protocol as installed), never through Beam's ``FileSystems``, so a driver, a Beam worker, the
trainer and DuckDB see the same store with the same credentials and emulator settings
(``STORAGE_EMULATOR_HOST``, ``AWS_ENDPOINT_URL``).

Atomic writes: a local file is written to a temporary name in the same directory and renamed
into place. An object is spooled to a local temporary file and uploaded only when the block
succeeds (one PUT, or a multipart / resumable upload that the store publishes only when it
completes): a block that raises uploads nothing, so no partial object is ever published.
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


def display(path: str) -> str:
    """A path as printed for the user: absolute when local, the URL otherwise."""
    return os.path.abspath(local_path(path)) if is_local(path) else path


def join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/")] + [p.strip("/") for p in rest])


def scheme(path: str) -> str:
    return path.split("://", 1)[0].lower() if not is_local(path) else ""


def storage_options(protocol: str) -> dict:
    """fsspec options of a store: the standard credential chains, plus the emulator settings the
    client libraries define. No listing cache: another process (a Beam worker, a resumed run)
    may have written since the last listing."""
    env = os.environ
    opts: dict = {"use_listings_cache": False}
    if protocol in ("gs", "gcs") and env.get("STORAGE_EMULATOR_HOST"):
        # gcsfs sends requests to the emulator; it needs no token, and asking google-auth for one
        # would look for Application Default Credentials that an emulator run does not have
        opts["token"] = "anon"
        opts["endpoint_url"] = env["STORAGE_EMULATOR_HOST"]
    if protocol in ("s3", "s3a") and env.get("AWS_ENDPOINT_URL"):
        opts["client_kwargs"] = {"endpoint_url": env["AWS_ENDPOINT_URL"]}
    return opts


def filesystem(path: str):
    """(fsspec filesystem, path without the protocol) of a non-local URL."""
    protocol = scheme(path)
    if protocol in ("gs", "gcs"):
        # gcsfs's core (JSON API) filesystem: the default class of gcsfs >= 2026.10 first asks
        # the gRPC Storage Control API for the bucket's type, which emulators do not serve (a
        # 60 s retry per bucket); every bucket, zonal and hierarchical ones too, speaks JSON
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(**storage_options(protocol)), path.split("://", 1)[1]
    return fsspec.filesystem(protocol, **storage_options(protocol)), path.split("://", 1)[1]


def _url(protocol: str, stripped: str) -> str:
    return f"{protocol}://{stripped}"


def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(local_path(path))
    fs, p = filesystem(path)
    return fs.exists(p)


def isfile(path: str) -> bool:
    if is_local(path):
        return os.path.isfile(local_path(path))
    fs, p = filesystem(path)
    return fs.isfile(p)


def isdir(path: str) -> bool:
    """A local directory, or an object-store prefix that holds at least one object."""
    if is_local(path):
        return os.path.isdir(local_path(path))
    fs, p = filesystem(path)
    return bool(fs.find(p.rstrip("/") + "/", maxdepth=None)) if fs.exists(p) else False


def stamp(path: str) -> tuple:
    """(size, modification stamp) of a file or object: what a cache keyed on it compares."""
    if is_local(path):
        st = os.stat(local_path(path))
        return st.st_size, st.st_mtime
    fs, p = filesystem(path)
    info = fs.info(p)
    return info.get("size"), str(info.get("LastModified") or info.get("updated") or info.get("mtime") or info.get("ETag") or "")


def open_read(path: str):
    """A binary file object for reading a local path or an object (streamed, not downloaded whole)."""
    if is_local(path):
        return open(local_path(path), "rb")
    fs, p = filesystem(path)
    return fs.open(p, "rb")


def sha256(path: str) -> str:
    """sha256 of a file's bytes, streamed in 1 MiB blocks from the disk or the store."""
    h = hashlib.sha256()
    with open_read(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def relpath(path: str, root: str) -> str:
    """``path`` relative to ``root``, the same string for a local and a remote data dir."""
    if is_local(path) and is_local(root):
        return os.path.relpath(local_path(path), local_path(root))
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path} is not under {root}")
    return path[len(prefix):]


def makedirs(path: str) -> None:
    if is_local(path):  # object stores have no directories
        os.makedirs(local_path(path), exist_ok=True)


def remove(path: str) -> None:
    """Delete a file or a whole tree, local or on a store; nothing if absent."""
    if is_local(path):
        p = local_path(path)
        if os.path.isdir(p) and not os.path.islink(p):
            import shutil

            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)
        return
    fs, p = filesystem(path)
    found = fs.find(p.rstrip("/") + "/") if not fs.isfile(p) else [p]
    if found:
        fs.rm(found)


def copy_tree(src: str, dst: str) -> None:
    """Copy every file under ``src`` to the same relative path under ``dst`` (atomic per file)."""
    for f in glob(join(src, "**", "*")):
        if isfile(f):
            write_bytes(join(dst, relpath(f, src)), read_bytes(f))


def download(path: str, local: str) -> None:
    """Copy a file (local or an object) to the local path ``local``."""
    with open_read(path) as src, atomic_open(local) as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            dst.write(chunk)


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
    fs, p = filesystem(pattern)
    protocol = scheme(pattern)
    if not any(c in p for c in "*?["):
        return [pattern] if fs.exists(p) else []
    return sorted(_url(protocol, m) for m in fs.glob(p))


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
        # spool locally, upload on success only: a block that raises publishes nothing (an
        # object store's upload, single or multipart/resumable, becomes visible only complete)
        import tempfile

        fs, p = filesystem(path)
        with tempfile.NamedTemporaryFile(prefix=".tmp-upload-", suffix=".part") as tmp:
            with open(tmp.name, mode) as f:
                yield f
            fs.put_file(tmp.name, p)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def save_figure(fig, path: str, **kwargs) -> None:
    """A matplotlib figure as a PNG at ``path`` (local or an object), atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    write_bytes(path, buf.getvalue())


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
            tables.append(pq.read_table(pa.BufferReader(read_bytes(p)), columns=columns, use_threads=False))
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
