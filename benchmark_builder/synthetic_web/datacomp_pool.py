"""The embedded DataComp pool and TiC-DataComp's released files, for offline pool builds.

``generate_pool(out_dir)`` writes, deterministically from a seed, in seconds:

```
<out_dir>/pool/NNNNNNNN.{tar,parquet}         a DataComp pool: <key>.jpg/.txt/.json + DataComp's columns
<out_dir>/tic_uids/tic-datacomp_training_yearly_noeval/{2014..2023}.npy, sizes.json
<out_dir>/tic_uids/tic-datacomp_training_monthly/{2014..2023}.tar   (YYYY/YYYYMM.npy, eval uids included)
<out_dir>/tic_uids/tic-datacomp_retrieval_evals_year2uids.pkl       year -> [uid]
<out_dir>/tic_uids/tic-datacompnet_year2uids.pkl                    year -> synset -> [uid]
<out_dir>/bestpool.npy                        a DataComp-style bestpool uid file
<out_dir>/ground_truth.json                   what was planted, per uid (the tests' oracle)
```

Images are the synthetic web's own drawings (``images.draw``, 96 px on the long side; the
``original_width``/``original_height`` columns give the drawn size before that), URLs point at
127.0.0.1 and are never fetched. uid files are written with DataComp's codec (:mod:`pipelines.uid`).

Per year: 10 training samples (one listed twice in its uid file: upsampling), 3 retrieval and 3
DataCompNet evaluation samples, one listed training uid whose download failed (img2dataset's
``failed_to_download`` row, no image), one listed uid absent from the pool, and 2 pool samples
in no uid file. Among the training samples, one non-English caption, one one-word caption and
one image under 200 px exercise ``basic``. DataCompNet samples show one of five fixture objects,
each standing for an ImageNet-1k synset (a documented subset, ``DATACOMPNET_SYNSETS``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from benchmark_builder.synthetic_web.concepts import OBJECTS
from benchmark_builder.synthetic_web.images import draw, encode, image_params, rng_for
from pipelines import io as pio
from pipelines import uid as uidcodec
from pipelines.sinks.webdataset import tar_bytes

# fixture object -> the ImageNet-1k synset its DataCompNet samples are labelled with
DATACOMPNET_SYNSETS = {
    "circle": "n03657121",  # lens cap
    "hexagon": "n03530642",  # honeycomb
    "bolt": "n04153751",  # screw
    "mask": "n03724870",  # mask
    "spiral": "n03944341",  # pinwheel
}
YEARS = tuple(range(2014, 2024))
FOREIGN = ("un cercle rouge sur fond bleu", "ein grünes Quadrat im Schnee", "una estrella amarilla en el cielo")


@dataclass(frozen=True)
class FixtureConfig:
    seed: int = 0
    train_per_year: int = 10
    retrieval_per_year: int = 3
    classification_per_year: int = 3
    unlisted_per_year: int = 2
    shard_size: int = 50
    image_size: int = 96
    port: int = 18919  # only in URLs; nothing is served


def _sample(cfg: FixtureConfig, sid: int, year: int, role: str, kind: str, r: np.random.Generator, obj: int | None = None) -> dict:
    p = image_params(cfg.seed, 900_000 + sid, min(year, 2022), "small" if kind == "small" else "normal")
    if obj is not None:
        p = dataclasses.replace(p, obj=obj)
    original = (p.width, p.height)
    scale = cfg.image_size / max(p.width, p.height)
    p = dataclasses.replace(p, width=max(8, round(p.width * scale)), height=max(8, round(p.height * scale)))
    jpg = encode(draw(p), quality=85)
    name = OBJECTS[p.obj].words[0]
    if kind == "foreign":
        text = FOREIGN[sid % len(FOREIGN)]
    elif kind == "one_word":
        text = name
    else:
        text = f"a photo of a {p.colour_name} {name} on a {p.scene_name} background"
    url = f"http://127.0.0.1:{cfg.port}/datacomp/{year}/{sid}.jpg"
    return {
        "uid": uidcodec.make_uid(url, text), "url": url, "text": text, "year": year, "month": int(r.integers(1, 13)),
        "role": role, "kind": kind, "object": OBJECTS[p.obj].name, "jpg": jpg,
        "original_width": original[0], "original_height": original[1], "width": p.width, "height": p.height,
        "sha256": hashlib.sha256(jpg).hexdigest(),
        "clip_b32_similarity_score": round(float(r.uniform(0.15, 0.4)), 4),
        "clip_l14_similarity_score": round(float(r.uniform(0.15, 0.4)), 4),
        "face_bboxes": [[0.1, 0.1, 0.3, 0.3]] if sid % 7 == 0 else [],
    }


def _npy(uids: list[str]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, uidcodec.encode(uids))  # sorted u8,u8: DataComp's codec; repeats stay
    return buf.getvalue()


def generate_pool(out_dir: str, cfg: FixtureConfig = FixtureConfig()) -> dict:
    """Write the fixture under ``out_dir`` (once per config: a second call reuses it)."""
    marker = pio.join(out_dir, "_SUCCESS.json")
    info = {"config": dataclasses.asdict(cfg), "pool": pio.join(out_dir, "pool"), "tic_uids": pio.join(out_dir, "tic_uids"),
            "bestpool_uids": pio.join(out_dir, "bestpool.npy"), "years": list(YEARS)}
    if pio.exists(marker) and pio.read_json(marker).get("config") == info["config"]:
        return pio.read_json(marker)
    samples, listed_only = _fixture_samples(cfg)
    pool = sorted(samples, key=lambda s: s["uid"])  # the pool: uid order, img2dataset keys, one parquet per tar
    for i in range(0, len(pool), cfg.shard_size):
        _write_pool_shard(out_dir, i // cfg.shard_size, pool[i:i + cfg.shard_size])
    everything = samples + listed_only
    _write_tic_files(info["tic_uids"], samples, everything)
    best = [s["uid"] for s in everything if s["role"] == "train" and int(s["uid"], 16) % 2 == 0]
    pio.write_bytes(info["bestpool_uids"], _npy(best))
    in_pool = {s["uid"] for s in samples}
    truth = {s["uid"]: {k: s.get(k) for k in ("year", "month", "role", "kind", "object", "download", "copies")}
             | {"in_pool": s["uid"] in in_pool, "synset": DATACOMPNET_SYNSETS.get(s["object"]) if s["role"] == "datacompnet" else None}
             for s in everything}
    pio.write_json(pio.join(out_dir, "ground_truth.json"), truth)
    info.update(pool_samples=len(pool), shards=(len(pool) + cfg.shard_size - 1) // cfg.shard_size)
    pio.write_json(marker, info)
    return info


def _fixture_samples(cfg: FixtureConfig) -> tuple[list[dict], list[dict]]:
    """(the pool's samples of every year, the samples listed in the uid files but missing from the pool)."""
    samples, listed_only = [], []
    sid = 0
    dcnet_objects = [i for i, o in enumerate(OBJECTS) if o.name in DATACOMPNET_SYNSETS]
    for y in YEARS:
        r = rng_for(cfg.seed, 31, y)
        kinds = ["normal"] * cfg.train_per_year
        kinds[1], kinds[2], kinds[3] = "foreign", "one_word", "small"
        for k in kinds:
            samples.append(_sample(cfg, sid, y, "train", k, r)); sid += 1
        samples[-cfg.train_per_year]["copies"] = 2  # the first training sample is listed twice
        for _ in range(cfg.retrieval_per_year):
            samples.append(_sample(cfg, sid, y, "retrieval", "normal", r)); sid += 1
        for j in range(cfg.classification_per_year):
            samples.append(_sample(cfg, sid, y, "datacompnet", "normal", r, obj=dcnet_objects[(sid + j) % len(dcnet_objects)])); sid += 1
        failed = _sample(cfg, sid, y, "train", "normal", r); sid += 1
        failed["download"] = "failed_to_download"
        samples.append(failed)
        for _ in range(cfg.unlisted_per_year):
            samples.append(_sample(cfg, sid, y, "unlisted", "normal", r)); sid += 1
        missing = _sample(cfg, sid, y, "train", "normal", r); sid += 1
        listed_only.append(missing)
    return samples, listed_only


_POOL_SCHEMA = pa.schema([
    ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()), ("original_width", pa.int64()),
    ("original_height", pa.int64()), ("sha256", pa.string()), ("clip_b32_similarity_score", pa.float64()),
    ("clip_l14_similarity_score", pa.float64()), ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
    ("key", pa.string()), ("status", pa.string()), ("error_message", pa.string()), ("width", pa.int64()),
    ("height", pa.int64())])


def _write_pool_shard(out_dir: str, shard_id: int, chunk: list[dict]) -> None:
    """One pool tar (the downloaded samples) and its parquet (every sample, with its download status)."""
    rows, tar_samples = [], []
    for j, s in enumerate(chunk):
        key = f"{shard_id:08d}{j:04d}"
        ok = s.get("download") is None
        rows.append({"uid": s["uid"], "url": s["url"], "text": s["text"], "original_width": s["original_width"] if ok else None,
                     "original_height": s["original_height"] if ok else None, "sha256": s["sha256"] if ok else None,
                     "clip_b32_similarity_score": s["clip_b32_similarity_score"], "clip_l14_similarity_score": s["clip_l14_similarity_score"],
                     "face_bboxes": s["face_bboxes"], "key": key, "status": "success" if ok else s["download"],
                     "error_message": None if ok else "HTTP Error 404: Not Found",
                     "width": s["width"] if ok else None, "height": s["height"] if ok else None})
        if ok:
            meta = {k: v for k, v in rows[-1].items() if k not in ("status", "error_message")}
            tar_samples.append({"key": key, "jpg": s["jpg"], "txt": s["text"], "json": {**meta, "status": "success"}})
    pio.write_bytes(pio.join(out_dir, "pool", f"{shard_id:08d}.tar"), tar_bytes(tar_samples))
    pio.write_parquet(pio.join(out_dir, "pool", f"{shard_id:08d}.parquet"), pa.Table.from_pylist(rows, schema=_POOL_SCHEMA))


def _write_tic_files(tic: str, samples: list[dict], everything: list[dict]) -> None:
    """TiC's released files: yearly and monthly training uids, retrieval and DataCompNet uids per year."""
    sizes, months_by_year = {}, {}
    for y in YEARS:
        train = [s["uid"] for s in everything if s["year"] == y and s["role"] == "train" for _ in range(s.get("copies", 1))]
        pio.write_bytes(pio.join(tic, "tic-datacomp_training_yearly_noeval", f"{y}.npy"), _npy(train))
        sizes[str(y)] = len(train)
        months: dict[int, list[str]] = {}
        for s in everything:  # monthly files include the evaluation uids, as released
            if s["year"] == y and s["role"] != "unlisted":
                months.setdefault(s["month"], []).extend([s["uid"]] * s.get("copies", 1))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for m, uids in sorted(months.items()):
                data = _npy(uids)
                ti = tarfile.TarInfo(f"{y}/{y}{m:02d}.npy"); ti.size = len(data); ti.mtime = 0
                t.addfile(ti, io.BytesIO(data))
        pio.write_bytes(pio.join(tic, "tic-datacomp_training_monthly", f"{y}.tar"), buf.getvalue())
        months_by_year[str(y)] = {str(m): len(u) for m, u in sorted(months.items())}
    pio.write_json(pio.join(tic, "tic-datacomp_training_yearly_noeval", "sizes.json"), sizes)
    pio.write_json(pio.join(tic, "tic-datacomp_training_monthly", "sizes.json"), {y: sum(m.values()) for y, m in months_by_year.items()})
    retrieval = {y: [s["uid"] for s in samples if s["year"] == y and s["role"] == "retrieval"] for y in YEARS}
    dcnet: dict[int, dict[str, list[str]]] = {}
    for s in samples:
        if s["role"] == "datacompnet":
            dcnet.setdefault(s["year"], {}).setdefault(DATACOMPNET_SYNSETS[s["object"]], []).append(s["uid"])
    pio.write_bytes(pio.join(tic, "tic-datacomp_retrieval_evals_year2uids.pkl"), pickle.dumps(retrieval, protocol=4))
    pio.write_bytes(pio.join(tic, "tic-datacompnet_year2uids.pkl"), pickle.dumps(dcnet, protocol=4))
