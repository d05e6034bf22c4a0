"""A DataComp pool and TiC-CLIP's released TiC-DataComp files, read as source rows.

**DataComp pool** (what ``download_upstream.py`` writes, img2dataset's webdataset output with
DataComp's extra columns): ``NNNNNNNN.tar`` shards holding ``<key>.jpg``, ``<key>.txt`` and
``<key>.json`` (whose ``uid`` names the sample), and one ``NNNNNNNN.parquet`` per shard with the
columns ``uid``, ``url``, ``text``, ``original_width``, ``original_height``, ``sha256``,
``clip_b32_similarity_score``, ``clip_l14_similarity_score``, ``face_bboxes`` (plus img2dataset's
``key``/``status``/``error_message``/``width``/``height`` when present); an ``NNNNNNNN.npz`` of
CLIP embeddings may sit beside them (not needed here). A pool is a directory or any URL that
``pipelines.io`` reads.

**TiC-DataComp's released files** (apple/ml-tic-clip's README):

- yearly training uids: ``YYYY.npy`` for 2014..2023, each a sorted ``u8,u8`` array (DataComp's
  uid codec, :mod:`pipelines.uid`), evaluation uids already removed, plus ``sizes.json``
  (year -> count); a uid may repeat (DataComp's resharder then writes it once per repeat);
- monthly training uids: ``YYYY.tar`` holding ``YYYY/YYYYMM.npy`` (evaluation uids included), or
  the same files already extracted under ``YYYY/``;
- TiC-DataComp-Retrieval: a pickle ``year -> [uid hex]``
  (``tic-datacomp_retrieval_evals_year2uids.pkl``);
- TiC-DataCompNet: a pickle ``year -> WordNet synset 'nXXXXXXXX' -> [uid hex]``
  (``tic-datacompnet_year2uids.pkl``), labelled 1000-way by the synset's index in ImageNet-1k's
  sorted-wnid order, which ships as data (``pipelines/data/imagenet_synsets.tsv``).

Pickles are read with the restricted unpickler (:func:`pipelines.safe_inputs.load_pickle`).
Every refusal is an :class:`~pipelines.safe_inputs.InputError` whose one-line message names the
file, so a command can print ``error: ...`` and exit 2.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass

import numpy as np

from pipelines import io as pio
from pipelines import uid as uidcodec
from pipelines.safe_inputs import InputError, load_pickle
from pipelines.sinks import webdataset as wds

POOL_COLUMNS = ("uid", "url", "text", "original_width", "original_height", "sha256",
                "clip_b32_similarity_score", "clip_l14_similarity_score", "face_bboxes")
SCORE_COLUMNS = ("clip_b32_similarity_score", "clip_l14_similarity_score", "face_bboxes")
YEARLY_DIR = "tic-datacomp_training_yearly_noeval"
MONTHLY_DIR = "tic-datacomp_training_monthly"
RETRIEVAL_PICKLE = "tic-datacomp_retrieval_evals_year2uids.pkl"
DATACOMPNET_PICKLE = "tic-datacompnet_year2uids.pkl"
TIC_YEARS = tuple(range(2014, 2024))
SYNSETS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "imagenet_synsets.tsv")
_WNID = re.compile(r"n\d{8}")
_SHARD = re.compile(r"(\d+)\.parquet")


# ---------------------------------------------------------------- ImageNet's synset order

def imagenet_synsets(path: str = SYNSETS_FILE) -> list[tuple[str, str]]:
    """The 1,000 ImageNet-1k classes as (wnid, WordNet names), in the standard order (sorted wnids:
    class id = position). Checked on every load: 1,000 unique ``nXXXXXXXX`` ids, sorted."""
    with open(path, encoding="utf-8") as f:
        rows = [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip()]
    wnids = [r[0] for r in rows]
    if len(rows) != 1000 or len(set(wnids)) != 1000 or wnids != sorted(wnids) or not all(_WNID.fullmatch(w) for w in wnids):
        raise InputError(f"{path}: not ImageNet-1k's synset list (1,000 unique sorted nXXXXXXXX ids)")
    return rows


def synset_index(path: str = SYNSETS_FILE) -> dict[str, int]:
    return {w: i for i, (w, _) in enumerate(imagenet_synsets(path))}


# ---------------------------------------------------------------- the pool

@dataclass(frozen=True)
class PoolShard:
    name: str  # NNNNNNNN
    parquet: str
    tar: str


def pool_shards(pool: str) -> list[PoolShard]:
    """The pool's shards, by name; InputError when the pool holds no ``NNNNNNNN.parquet``."""
    files = sorted(f for f in pio.glob(pio.join(pool, "*.parquet")) if _SHARD.fullmatch(f.rsplit("/", 1)[-1]))
    if not files:
        raise InputError(f"{pool}: no DataComp pool here (no NNNNNNNN.parquet metadata shard)")
    out = []
    for f in files:
        name = f.rsplit("/", 1)[-1].removesuffix(".parquet")
        out.append(PoolShard(name, f, f[: -len(".parquet")] + ".tar"))
    return out


def read_pool_metadata(shard: PoolShard) -> list[dict]:
    """The shard's Parquet rows with DataComp's columns (missing optional ones are null).
    InputError, naming the file, when it is unreadable or lacks ``uid``/``url``/``text``."""
    try:
        table = pio.read_parquet([shard.parquet])
    except Exception as e:  # truncated, not Parquet
        raise InputError(f"{shard.parquet}: unreadable pool metadata ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    missing = [c for c in ("uid", "url", "text") if c not in table.column_names]
    if missing:
        raise InputError(f"{shard.parquet}: not DataComp pool metadata (missing columns {missing})")
    rows = []
    for r in table.to_pylist():
        if not uidcodec.is_uid(r.get("uid")):
            raise InputError(f"{shard.parquet}: bad uid {r.get('uid')!r} (32 lowercase hex characters expected)")
        out = {c: r.get(c) for c in POOL_COLUMNS}
        out["pool_shard"] = shard.name
        out["pool_key"] = r.get("key")
        out["pool_status"] = r.get("status")  # img2dataset's success | failed_to_download | ...
        out["pool_error"] = r.get("error_message")
        rows.append(out)
    return rows


def read_pool_images(shard: PoolShard) -> tuple[dict[str, dict], str | None]:
    """uid -> {jpg, txt, json} of the shard's tar, and None; or ({}, reason) when the tar is
    missing (``pool_shard_missing``) or unreadable (``pool_shard_unreadable``)."""
    if not pio.exists(shard.tar):
        return {}, "pool_shard_missing"
    out: dict[str, dict] = {}
    by_key: dict[str, dict] = {}
    try:
        for s in wds.iter_samples(shard.tar):
            by_key.setdefault(s.pop("key").rsplit("/", 1)[-1], {}).update(s)
    except (tarfile.TarError, OSError, EOFError):
        return {}, "pool_shard_unreadable"
    for key, s in by_key.items():
        uid = None
        if "json" in s:
            try:
                uid = json.loads(s["json"]).get("uid")
            except ValueError:
                uid = None
        if uid and "jpg" in s:
            out[uid] = s
    return out, None


# ---------------------------------------------------------------- TiC's released uid files

def uid_array(data, source: str) -> np.ndarray:
    """A released uid file (its bytes, or a local path, memory-mapped) as a sorted ``u8,u8`` array.
    The files are released sorted, so a local one stays on disk (the yearly files index
    DataComp's 12.8B-sample pool); an unsorted one is sorted in memory."""
    try:
        if isinstance(data, (bytes, bytearray)):
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            arr = np.load(data, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise InputError(f"{source}: not a readable .npy uid file ({type(e).__name__})") from None
    if arr.dtype != uidcodec.UID_DTYPE:
        raise InputError(f"{source}: expected DataComp's uid dtype u8,u8, got {arr.dtype}")
    return arr if uidcodec.is_sorted(arr) else np.sort(arr)


def read_uid_file(path: str) -> np.ndarray:
    """``uid_array`` of a file: memory-mapped when local, read whole from a store."""
    return uid_array(pio.local_path(path) if pio.is_local(path) else pio.read_bytes(path), path)


def _uids_dir(tic_uids: str, sub: str) -> str:
    d = pio.join(tic_uids, sub)
    return d if pio.exists(d) else tic_uids


def read_yearly_uids(tic_uids: str, years=TIC_YEARS) -> dict[int, np.ndarray]:
    """year -> sorted ``u8,u8`` array (a repeated uid repeats) from ``YYYY.npy`` (under
    ``tic-datacomp_training_yearly_noeval/`` or ``tic_uids`` itself). A missing or unreadable file
    is an InputError naming it."""
    d = _uids_dir(tic_uids, YEARLY_DIR)
    out = {}
    for y in years:
        path = pio.join(d, f"{y}.npy")
        if not pio.exists(path):
            raise InputError(f"{path}: yearly uid file missing (TiC-DataComp releases {TIC_YEARS[0]}.npy..{TIC_YEARS[-1]}.npy)")
        out[y] = read_uid_file(path)
    return out


def read_sizes(tic_uids: str, sub: str = YEARLY_DIR) -> dict[str, int] | None:
    path = pio.join(_uids_dir(tic_uids, sub), "sizes.json")
    if not pio.exists(path):
        return None
    try:
        return {str(k): int(v) for k, v in pio.read_json(path).items()}
    except (ValueError, AttributeError, TypeError):
        raise InputError(f"{path}: not a sizes.json (an object of year -> count)") from None


_MONTH_FILE = re.compile(r"(?:.*/)?(\d{4})(\d{2})\.npy")


def read_monthly_uids(tic_uids: str, years=TIC_YEARS) -> dict[tuple[int, int], np.ndarray]:
    """(year, month) -> sorted ``u8,u8`` array from ``YYYY.tar`` (members ``YYYY/YYYYMM.npy``) or
    the extracted ``YYYY/YYYYMM.npy`` (under ``tic-datacomp_training_monthly/`` or ``tic_uids``)."""
    d = _uids_dir(tic_uids, MONTHLY_DIR)
    out: dict[tuple[int, int], np.ndarray] = {}
    for y in years:
        tar_path, sub = pio.join(d, f"{y}.tar"), pio.join(d, str(y))
        found = {}
        if pio.exists(tar_path):
            try:
                with pio.open_read(tar_path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
                    for m in tar:
                        hit = _MONTH_FILE.fullmatch(m.name)
                        if m.isfile() and hit:
                            found[(int(hit[1]), int(hit[2]))] = (tar.extractfile(m).read(), f"{tar_path}:{m.name}")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise InputError(f"{tar_path}: unreadable monthly uid archive ({type(e).__name__})") from None
        else:
            for path in pio.glob(pio.join(sub, "*.npy")):
                hit = _MONTH_FILE.fullmatch(path)
                if hit:
                    found[(int(hit[1]), int(hit[2]))] = (pio.local_path(path) if pio.is_local(path) else pio.read_bytes(path), path)
        if not found:
            raise InputError(f"{tar_path}: monthly uid archive missing (or {sub}/YYYYMM.npy)")
        for (fy, m), (data, source) in sorted(found.items()):
            if fy != y or not 1 <= m <= 12:
                raise InputError(f"{source}: month file of {fy}-{m:02d} inside year {y}'s archive")
            out[(y, m)] = uid_array(data, source)
    return out


def _year_key(k, source: str) -> int:
    try:
        y = int(k)
    except (TypeError, ValueError):
        raise InputError(f"{source}: key {k!r} is not a year") from None
    return y


def _uid_list(values, source: str, where: str) -> list[str]:
    if isinstance(values, np.ndarray) and values.dtype == uidcodec.UID_DTYPE:
        return uidcodec.decode(values)
    out = []
    for v in list(values):
        v = v.decode() if isinstance(v, bytes) else v
        if not uidcodec.is_uid(v):
            raise InputError(f"{source}: {where}: {v!r} is not a uid (32 lowercase hex characters)")
        out.append(v)
    return out


def read_retrieval_pickle(path: str) -> dict[int, list[str]]:
    """TiC-DataComp-Retrieval: year -> uids."""
    obj = load_pickle(path, encoding="utf-8")
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict year -> [uid], got {type(obj).__name__}")
    return {_year_key(k, path): _uid_list(v, path, f"year {k}") for k, v in obj.items()}


def read_datacompnet_pickle(path: str, synsets: dict[str, int] | None = None) -> dict[int, dict[str, int]]:
    """TiC-DataCompNet: year -> uid -> ImageNet class id (the synset's index in ImageNet's order).
    A synset outside ImageNet-1k, or a uid under two synsets of one year, is an InputError."""
    synsets = synsets if synsets is not None else synset_index()
    obj = load_pickle(path, encoding="utf-8")
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict year -> synset -> [uid], got {type(obj).__name__}")
    out: dict[int, dict[str, int]] = {}
    for k, by_synset in obj.items():
        y = _year_key(k, path)
        if not isinstance(by_synset, dict):
            raise InputError(f"{path}: year {k}: expected a dict synset -> [uid]")
        labels: dict[str, int] = {}
        for wnid, uids in by_synset.items():
            wnid = wnid.decode() if isinstance(wnid, bytes) else wnid
            if wnid not in synsets:
                raise InputError(f"{path}: year {k}: {wnid!r} is not an ImageNet-1k synset")
            for u in _uid_list(uids, path, f"year {k} synset {wnid}"):
                if labels.get(u, synsets[wnid]) != synsets[wnid]:
                    raise InputError(f"{path}: year {k}: uid {u} is under two synsets")
                labels[u] = synsets[wnid]
        out[y] = labels
    return out


def find_tic_file(tic_uids: str, name: str) -> str:
    path = pio.join(tic_uids, name)
    if not pio.exists(path):
        raise InputError(f"{path}: missing (TiC-CLIP's released {name})")
    return path
