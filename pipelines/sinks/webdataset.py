"""WebDataset shards in the img2dataset / DataComp layout.

``NNNNNNNN.tar`` holding ``<key>.jpg``, ``<key>.txt``, ``<key>.json`` (and ``<key>.cls`` for
classification sets), ``NNNNNNNN_stats.json`` beside each tar, and ``sizes.json`` for the
directory. Tars are reproducible: members in the given order, fixed mtime/owner/mode, so the
same samples always give the same bytes.
"""
from __future__ import annotations

import io
import json
import tarfile
from typing import Iterable, Iterator

from pipelines import io as pio

TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z, fixed so shards are byte-reproducible
SHARD_DIGITS = 8


def shard_name(shard_id: int, digits: int = SHARD_DIGITS) -> str:
    return f"{shard_id:0{digits}d}"


def sample_key(shard_id: int, index: int, samples_per_shard: int = 10_000, shard_digits: int = 5) -> str:
    """img2dataset's key: shard id then index within the shard, zero-padded."""
    oom = max(1, len(str(samples_per_shard - 1)))
    return f"{shard_id * 10**oom + index:0{oom + shard_digits}d}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tar(fileobj, samples: Iterable[dict]) -> None:
    """Samples -> a tar written to ``fileobj`` as they come (one sample in memory at a time).
    Each sample: ``key`` plus extension -> bytes/str/dict entries."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            key = s["key"]
            for ext in sorted(k for k in s if k != "key"):
                v = s[ext]
                if v is None:
                    continue
                if isinstance(v, dict):
                    v = json.dumps(v, sort_keys=True, default=str).encode()
                elif isinstance(v, str):
                    v = v.encode("utf-8")
                elif isinstance(v, int):
                    v = str(v).encode()
                _add(tar, f"{key}.{ext}", v)


def tar_bytes(samples: Iterable[dict]) -> bytes:
    """Samples -> tar bytes (``write_tar`` into memory)."""
    buf = io.BytesIO()
    write_tar(buf, samples)
    return buf.getvalue()


def write_shard(out_dir: str, shard_id: int, samples: Iterable[dict], stats: dict) -> str:
    """Write one shard and its stats atomically; returns the tar path. ``samples`` may be a
    generator: the tar is streamed to its temp file, never held whole in memory."""
    name = shard_name(shard_id)
    tar_path = pio.join(out_dir, f"{name}.tar")
    with pio.atomic_open(tar_path) as f:
        write_tar(f, samples)
    pio.write_json(pio.join(out_dir, f"{name}_stats.json"), stats)
    return tar_path


def iter_samples(path_or_url: str, keys: Iterable[str] | None = None) -> Iterator[dict]:
    """The one shard reader: the samples of a WebDataset tar (local path or object-store URL,
    through ``pipelines.io``), streamed in file order, each ``{"key": <key>, <ext>: bytes, ...}``
    (the form ``tar_bytes`` writes back). Members of a sample are consecutive in the tar (the
    WebDataset convention); a member's key is its name up to the first dot. ``keys``: read only
    these extensions (e.g. ``("json",)``), the others are skipped without being read; a sample with
    none of them is not yielded."""
    wanted = None if keys is None else set(keys)
    with pio.open_read(path_or_url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        cur: dict = {}
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if wanted is not None and ext not in wanted:
                continue
            if cur and cur["key"] != key:
                yield cur
                cur = {}
            cur["key"] = key
            cur[ext] = tar.extractfile(m).read()
        if cur:
            yield cur
