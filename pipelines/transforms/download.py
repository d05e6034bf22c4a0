"""Download stage: candidates -> raw pool shards (images) plus a status row per candidate.

The shard is the unit of work and retry, as in img2dataset: candidates are ordered by uid and
cut into pool shards of ``shard_size``; each shard is fetched with a thread pool (network
waits and Pillow's GIL-free decode overlap), written as ``pool/shards/NNNNN.tar`` (keys are
uids) and ``pool/status/NNNNN.parquet`` (every candidate with its outcome), atomically. A
shard already on disk from an earlier, killed run is read back instead of downloaded again,
and yields exactly the rows a fresh download would.

No exception escapes a candidate: every failure of fetch, decode or resize is a ``reason`` in the
status row (``fetch_error:<ExceptionType>`` with ``error_message`` as the last resort), so a
shard is always written complete. A watchdog bounds each shard: candidates not finished when
its budget (``shard_budget``) runs out end with ``shard_deadline`` and their downloads are
cancelled (sockets shut, threads abandoned); the shard is still written with every row.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import apache_beam as beam

from pipelines import io as pio
from pipelines import schema
from pipelines.fetch import Cancel, Fetcher, FetchConfig
from pipelines.resize import ResizeConfig, resize_image
from pipelines.sinks import webdataset as wds
from pipelines.stats import mark

STAGE = "download"
SHARD_DIGITS = 5

__all__ = ["DownloadConfig", "FetchConfig", "ResizeConfig", "download_rows", "DownloadShards", "STAGE"]


@dataclass(frozen=True)
class DownloadConfig:
    fetch: FetchConfig = field(default_factory=FetchConfig)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    thread_count: int = 32
    shard_size: int = 500
    shard_slack: float = 30.0  # seconds the watchdog adds to a shard's download budget (decode, scheduling)
    shard_budget: float | None = None  # seconds; None: computed from the timeouts (see shard_budget())


def shard_budget(n: int, cfg: DownloadConfig) -> float:
    """Seconds one shard of ``n`` candidates may take. A download takes at most
    ``timeout x (retries + 1)``; at least ``k = min(threads, max_per_host)`` run at once while
    ``k`` or more are left, so all end within ``(n / k + 1)`` such spans (one when ``n <= k``)."""
    if cfg.shard_budget is not None:
        return cfg.shard_budget
    per_download = cfg.fetch.timeout * (cfg.fetch.retries + 1)
    k = max(1, min(cfg.thread_count, cfg.fetch.max_per_host))
    waves = 1 if n <= k else math.ceil(n / k) + 1
    return waves * per_download + cfg.shard_slack


def _failed(reason: str, message: str | None = None, http_status: int | None = None) -> dict:
    return {"status": "error", "reason": reason, "http_status": http_status, "error_message": message}


def _one(fetcher: Fetcher, cfg: DownloadConfig, row: dict, cancel: Cancel | None = None) -> tuple[dict, bytes | None]:
    try:
        return _fetch_resize(fetcher, cfg, row, cancel)
    except Exception as e:  # a failure no rule names: the candidate still gets its row
        return _failed(f"fetch_error:{type(e).__name__}", f"{type(e).__name__}: {e}"[:300]), None


def _fetch_resize(fetcher: Fetcher, cfg: DownloadConfig, row: dict, cancel: Cancel | None) -> tuple[dict, bytes | None]:
    if cancel is not None and cancel.cancelled:
        return _failed("shard_deadline", "not started before the shard's deadline"), None
    res = fetcher.fetch(row["url"], cancel)
    out = _failed(res.reason, res.error_message, res.http_status)
    if not res.ok:
        return out, None
    img = resize_image(res.body, cfg.resize)
    out.update(http_status=res.http_status, original_width=img.original_width, original_height=img.original_height,
               sha256=img.sha256)
    if img.reason:
        out.update(reason=img.reason, error_message=img.error_message)
        return out, None
    out.update(status="success", reason=None, error_message=None, width=img.width, height=img.height, phash=img.phash)
    return out, img.jpg


def download_rows(rows: list[dict], cfg: DownloadConfig, fetcher: Fetcher | None = None, progress: bool = False):
    """Fetch and resize ``rows``; returns [(row + outcome fields, jpg bytes or None)] in input order,
    within ``shard_budget`` seconds whatever the servers do (late candidates: ``shard_deadline``)."""
    fetcher = fetcher or Fetcher(cfg.fetch)
    deadline = time.monotonic() + shard_budget(len(rows), cfg)
    cancel = Cancel()
    pool = ThreadPoolExecutor(max_workers=max(1, min(cfg.thread_count, len(rows) or 1)), thread_name_prefix="download")
    futures = [pool.submit(_one, fetcher, cfg, r, cancel) for r in rows]
    pending = set(futures)
    if progress:
        from tqdm import tqdm

        with tqdm(total=len(futures), desc="download", unit="img") as bar:
            while pending and time.monotonic() < deadline:
                done, pending = wait(pending, timeout=min(1.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
                bar.update(len(done))
    else:
        pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))[1]
    if pending:  # the watchdog: cut what is left, shut its sockets, do not wait for its threads
        cancel.fire()
        pool.shutdown(wait=False, cancel_futures=True)
    else:
        pool.shutdown(wait=True)
    late = _failed("shard_deadline", "not finished within the shard's deadline")
    return [({**row, **(late if f in pending else f.result()[0])}, None if f in pending else f.result()[1])
            for row, f in zip(rows, futures)]


def _status_path(out_dir: str, shard: str) -> str:
    return pio.join(out_dir, "status", f"{shard}.parquet")


def _tar_path(out_dir: str, shard: str) -> str:
    return pio.join(out_dir, "shards", f"{shard}.tar")


def _emit(rows: list[dict], images: dict[str, bytes] | None = None):
    """Downloaded rows (with their image bytes when ``images`` is given; without, a row names
    its ``pool_shard`` and ``pool.images_of`` reads the image back) and status rows of failures."""
    for row in rows:
        if row["status"] == "success":
            yield {**row, "jpg": images[row["uid"]]} if images is not None else dict(row)
        else:
            reason = row["reason"]
            yield beam.pvalue.TaggedOutput("status", {
                "uid": row["uid"], "url": row["url"], "year": row["year"], "status": "dropped", "reason": reason,
                "stage": STAGE, "http_status": row["http_status"], "error_message": row["error_message"]})


POOL_SAMPLE_JSON = ("uid", "url", "text", "width", "height", "original_width", "original_height", "sha256")


def pool_sample(row: dict, jpg: bytes) -> dict:
    """A pool shard's tar entry for a downloaded candidate (``<uid>.jpg/.txt/.json``)."""
    return {"key": row["uid"], "jpg": jpg, "txt": row["text"], "json": {k: row[k] for k in POOL_SAMPLE_JSON}}


def pool_status_row(row: dict, shard: str) -> dict:
    """A pool shard's status row for a candidate."""
    return {**schema.project(row, schema.POOL_STATUS), "pool_shard": shard}


def process_shard(out_dir: str, shard: str, rows: list[dict], cfg: DownloadConfig, fetcher: Fetcher | None = None,
                  with_images: bool = True):
    """Download one pool shard (or read it back when a finished copy exists) -> (rows, images);
    images is None with ``with_images`` false: the shard's tar holds them, and a caller that
    reads them back later does not keep every shard's images until its bundle ends."""
    status_path, tar_path = _status_path(out_dir, shard), _tar_path(out_dir, shard)
    if pio.exists(status_path) and pio.exists(tar_path):
        table = pio.read_parquet(status_path)
        if sorted(table.column("uid").to_pylist()) == sorted(r["uid"] for r in rows):
            images = {s["key"]: s["jpg"] for s in wds.iter_samples(tar_path)} if with_images else None
            return table.to_pylist(), images
    rows = sorted(rows, key=lambda r: r["uid"])
    results = download_rows(rows, cfg, fetcher)
    images = {row["uid"]: jpg for row, jpg in results if jpg is not None}
    table = schema.to_table([pool_status_row(row, shard) for row, _ in results], schema.POOL_STATUS)
    samples = [pool_sample(row, images[row["uid"]]) for row, _ in results if row["uid"] in images]
    pio.write_bytes(tar_path, wds.tar_bytes(samples))  # the tar first: a status file means the shard is complete
    pio.write_parquet(status_path, table)
    return table.to_pylist(), images if with_images else None  # round-tripped through the table: identical to a read-back shard


class _DownloadShard(beam.DoFn):
    """Downloads every shard of a bundle concurrently (a slow server stalls one shard's tail,
    not the whole bundle; the shards of every year a job builds share the bundle, so one
    year's stalls overlap another's downloads) and emits when the bundle finishes."""

    def __init__(self, out_dirs: dict, cfg: DownloadConfig, concurrent_shards: int = 8, with_images: bool = True):
        self.out_dirs, self.cfg, self.concurrent_shards, self.with_images = out_dirs, cfg, concurrent_shards, with_images

    def setup(self):
        self.fetcher = Fetcher(self.cfg.fetch)
        self.shards = ThreadPoolExecutor(max_workers=self.concurrent_shards)

    def start_bundle(self):
        self.pending = []

    def process(self, element):
        (year, shard), rows = element
        mark(None, STAGE)  # busy from the first shard submitted ...
        self.pending.append(self.shards.submit(process_shard, self.out_dirs[year], shard, list(rows), self.cfg, self.fetcher,
                                              self.with_images))

    def finish_bundle(self):
        from concurrent.futures import as_completed

        from apache_beam.transforms.window import GlobalWindows
        from tqdm import tqdm

        # as_completed drops each future once yielded, and no list here keeps one: a shard's
        # images are freed once emitted, not held until the bundle's last shard is done
        done, total, self.pending = as_completed(self.pending), len(self.pending), []
        for future in tqdm(done, total=total, desc="download shards", unit="shard", leave=False, disable=None):
            rows, images = future.result()
            mark(None, STAGE)  # ... to the last one done
            for out in _emit(rows, images if self.with_images else None):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
                else:
                    yield GlobalWindows.windowed_value(out)

    def teardown(self):
        self.shards.shutdown(wait=False)


class DownloadShards(beam.PTransform):
    """Candidates -> ``samples`` (rows with ``jpg``, main output) and ``status`` (failures).

    ``out_dirs``: the pool directory, or ``{year: pool directory}`` when the candidates span
    several years (each year is cut into its own pool shards, by uid rank within the year).
    ``with_images=False``: samples carry no ``jpg`` (they name their ``pool_shard``; the build
    reads images back where it writes them, so no shuffle holds a year's images)."""

    def __init__(self, out_dirs, cfg: DownloadConfig, concurrent_shards: int = 8, with_images: bool = True):
        super().__init__()
        self.out_dirs, self.cfg, self.concurrent_shards, self.with_images = out_dirs, cfg, concurrent_shards, with_images

    def expand(self, candidates):
        size, out_dirs = self.cfg.shard_size, self.out_dirs
        year_of = (lambda r: None) if isinstance(out_dirs, str) else (lambda r: r["year"])  # noqa: E731
        dirs = {None: out_dirs} if isinstance(out_dirs, str) else dict(out_dirs)
        order = (  # uid -> rank within its year: a list of uids per year, never of rows
            candidates
            | "Uids" >> beam.Map(lambda r: (year_of(r), r["uid"]))
            | "UidsPerYear" >> beam.GroupByKey()
            | "Sort" >> beam.MapTuple(lambda y, uids: (y, {u: i for i, u in enumerate(sorted(uids))}))
        )
        return (
            candidates
            | "AssignShard" >> beam.Map(
                lambda r, rank: ((year_of(r), wds.shard_name(rank[year_of(r)][r["uid"]] // size, SHARD_DIGITS)), r),
                beam.pvalue.AsDict(order))
            | "GroupShard" >> beam.GroupByKey()
            | "Fetch" >> beam.ParDo(_DownloadShard(dirs, self.cfg, self.concurrent_shards, self.with_images))
            .with_outputs("status", main="samples")
        )
