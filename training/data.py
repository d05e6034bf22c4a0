"""Training data: streams over a variant's yearly WebDataset shards, mixed per time step.

A ``Source`` is one time step's shards (optionally a deterministic subset of them, as a replay
buffer keeps). A protocol's data for a step is a list of sources with sampling weights;
``MixtureStream`` draws each sample's source with a seeded generator and reads each source as
an endless sequence of epochs (shard order reshuffled per epoch) through a shuffle buffer.

Splitting across DDP ranks and DataLoader workers is per sample, not per shard: reader slot
``s`` of ``n`` (n = world size x workers) keeps the samples at positions ``i % n == s`` of the
epoch, so no two ranks or workers read the same sample in an epoch, and a year held in one
shard still feeds every rank. Everything random is a function of (seed, position): the same
run gives the same batches, and a resumed run skips exactly the samples it had consumed
(cheap: skipped samples are never decoded) and continues with the same batches, image
augmentations included.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from benchmark_builder.layout import Layout
from benchmark_builder.specs import TimeStep, parse_time_steps, resolve_spec  # noqa: F401 (parse_time_steps re-exported)
from pipelines import io as pio
from pipelines.models.encode import decode_image
from pipelines.sinks import webdataset as wds

TEXT_FIELDS = ("alt", "generated", "both")


@dataclass(frozen=True)
class Source:
    name: str
    shards: tuple[str, ...]
    size: int  # samples in the shards
    keep_fraction: float = 1.0  # replay subset: samples whose uid hash falls below it
    weight: float | None = None  # sampling weight; None: the expected number of samples kept
    months: tuple[int, ...] | None = None  # monthly time steps: only samples first seen in these months
    uids: frozenset[str] | None = None  # concept streams: only these samples of the shards

    @property
    def expected_size(self) -> float:
        return self.size * self.keep_fraction

    def subset(self, fraction: float) -> "Source":
        return Source(self.name, self.shards, self.size, min(1.0, self.keep_fraction * fraction), months=self.months,
                      uids=self.uids)


def _month_counts(shards: list[str]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for shard in shards:
        for s in wds.iter_samples(shard, keys=("json",)):
            m = json.loads(s["json"]).get("month")
            counts[m] = counts.get(m, 0) + 1
    return counts


def time_step_sources(data_dir: str, variant: str, benchmark: str = "tic-datacomp",
                      steps: tuple[TimeStep, ...] | None = None) -> list[Source]:
    """One source per time step of the benchmark with training shards on disk. A step of whole
    years reads their shards; a monthly step reads its year's shards and keeps its months."""
    layout = Layout(data_dir, benchmark)
    out = []
    month_counts: dict[tuple, dict[int, int]] = {}
    empty: list[str] = []
    for step in steps or resolve_spec(benchmark, data_dir=data_dir).time_steps:
        shards, size = [], 0
        for year in step.years:
            d = layout.train_shards(variant, year)
            sizes_path = pio.join(d, "sizes.json")
            if not pio.exists(sizes_path):
                break
            sizes = pio.read_json(sizes_path)
            year_shards = [pio.join(d, s) for s in sorted(sizes)]
            shards += year_shards
            if step.months is None:
                size += sum(sizes.values())
            else:
                counts = month_counts.setdefault((year,), _month_counts(year_shards))
                size += sum(counts.get(m, 0) for m in step.months)
        else:
            if size:
                out.append(Source(step.name, tuple(shards), size, months=step.months))
            else:  # an empty year is normal (nothing crawled, downloaded or kept): the step is skipped
                print(f"time step {step.name}: 0 training samples in variant {variant!r}, skipped")
                empty.append(step.name)
            continue
        break  # a step with a missing year ends the usable prefix
    if not out and empty:
        raise FileNotFoundError(f"every time step of variant {variant!r} under {layout.root} is empty "
                                f"({', '.join(empty)}): nothing to train on")
    if not out:
        raise FileNotFoundError(
            f"no training shards for variant {variant!r} under {layout.root}/variants: build the benchmark first "
            "(make build-tic-datacomp-all)"
        )
    return out


def uid_fraction(uid: str) -> float:
    """A uid's position in [0, 1): the order replay subsets are taken in."""
    return int(hashlib.sha256(uid.encode()).hexdigest()[:12], 16) / float(1 << 48)


def _rng(*keys) -> random.Random:
    return random.Random(hashlib.sha256(repr(keys).encode()).digest())


def source_epochs(src: Source, seed: int, slot: int, n_slots: int) -> Iterator[dict]:
    """Endless stream of this reader slot's samples of ``src``, epoch after epoch."""
    epoch = 0
    while True:
        shards = list(src.shards)
        _rng(seed, src.name, epoch).shuffle(shards)
        i = 0
        produced = 0
        for shard in shards:
            for s in wds.iter_samples(shard):
                meta = json.loads(s["json"])
                if src.keep_fraction < 1.0 and uid_fraction(meta["uid"]) >= src.keep_fraction:
                    continue
                if src.months is not None and meta.get("month") not in src.months:
                    continue
                if src.uids is not None and meta["uid"] not in src.uids:
                    continue
                if i % n_slots == slot:
                    s["meta"] = meta
                    s["epoch"] = epoch
                    produced += 1
                    yield s
                i += 1
        if produced == 0:
            raise ValueError(f"source {src.name}: reader slot {slot} of {n_slots} got no samples "
                             f"({src.expected_size:.0f} expected in {len(src.shards)} shards)")
        epoch += 1


def shuffled(stream: Iterator[dict], buffer: int, rng: random.Random) -> Iterator[dict]:
    buf: list = []
    for s in stream:
        if len(buf) < buffer:
            buf.append(s)
            continue
        j = rng.randrange(len(buf))
        buf[j], s = s, buf[j]
        yield s


def mixture(sources: list[Source], seed: int, slot: int, n_slots: int, buffer: int = 1000) -> Iterator[dict]:
    """Samples from ``sources``, each draw choosing a source with probability ∝ its weight."""
    streams = [
        shuffled(source_epochs(s, seed, slot, n_slots), buffer, _rng(seed, "shuffle", s.name, slot)) for s in sources
    ]
    weights = [s.weight if s.weight is not None else s.expected_size for s in sources]
    if not sources or sum(weights) <= 0:
        raise ValueError("a data mixture needs at least one source with positive weight")
    pick = _rng(seed, "mixture", slot)
    while True:
        k = pick.choices(range(len(sources)), weights)[0] if len(sources) > 1 else 0
        s = next(streams[k])
        s["source"] = sources[k].name
        yield s


def choose_text(meta: dict, field: str, rng: random.Random) -> str:
    alt, gen = meta.get("text") or "", meta.get("caption_generated") or ""
    if field == "alt" or not gen:
        return alt
    if field == "generated":
        return gen
    return alt if rng.random() < 0.5 else gen


def sample_id(uid: str) -> int:
    """A uid as a non-negative int64 (for per-sample state and checks across ranks)."""
    return int(uid[:15], 16)


@dataclass
class StreamConfig:
    sources: list[Source]
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    workers: int = 0
    buffer: int = 1000
    text: str = "alt"
    skip_batches: int = 0  # batches this rank already consumed (resume)
    image_size: int = 32
    transform: Callable | None = None
    tokenizer: Callable | None = None
    extra: dict = field(default_factory=dict)


class MixtureStream(torch.utils.data.IterableDataset):
    """Batches of (images, tokens, sample ids, source index) for one rank."""

    def __init__(self, cfg: StreamConfig):
        super().__init__()
        if cfg.text not in TEXT_FIELDS:
            raise ValueError(f"text must be one of {TEXT_FIELDS}, got {cfg.text!r}")
        self.cfg = cfg

    def __iter__(self):
        cfg = self.cfg
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        slot, n_slots = cfg.rank * n_workers + worker, cfg.world_size * n_workers
        # DataLoader hands out worker batches round robin: worker k made every n_workers-th batch
        skip = cfg.skip_batches // n_workers + (1 if worker < cfg.skip_batches % n_workers else 0)
        names = [s.name for s in cfg.sources]
        stream = mixture(cfg.sources, cfg.seed, slot, n_slots, cfg.buffer)
        for _ in range(skip * cfg.batch_size):
            next(stream)
        position = skip * cfg.batch_size
        while True:
            images, texts, ids, srcs = [], [], [], []
            for _ in range(cfg.batch_size):
                s = next(stream)
                rng = _rng(cfg.seed, "sample", slot, position)
                # augmentation randomness, fixed by position; the CPU generator only: torch.manual_seed
                # also queues a lazy CUDA seeding with its stack trace on CUDA builds (~ms per sample)
                torch.default_generator.manual_seed(rng.getrandbits(63))
                img = decode_image(s["jpg"], cfg.image_size)
                images.append(cfg.transform(img) if cfg.transform else img)
                texts.append(choose_text(s["meta"], cfg.text, rng))
                ids.append(sample_id(s["meta"]["uid"]))
                srcs.append(names.index(s["source"]))
                position += 1
            tokens = cfg.tokenizer(texts) if cfg.tokenizer else texts
            yield torch.stack(images), tokens, torch.tensor(ids, dtype=torch.int64), torch.tensor(srcs, dtype=torch.int64)


def loader(cfg: StreamConfig) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        MixtureStream(cfg), batch_size=None, num_workers=cfg.workers, persistent_workers=False,
        prefetch_factor=4 if cfg.workers else None,
    )


def default_workers() -> int:
    return 1 if (os.cpu_count() or 1) <= 2 else 2


def rank_cores() -> int:
    """The cores this process may run on, shared among the ranks torchrun started on this node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def compute_threads(threads: int, workers: int) -> int:
    """Intra-op threads of a CPU rank: ``threads`` when > 0, else ``OMP_NUM_THREADS`` when set, else
    the rank's cores minus its DataLoader workers (at least 1). torch's default, one thread per
    core, puts an OpenMP team as wide as the machine beside the loader workers: the cores are
    oversubscribed and the team's threads wait on each other at every operator's barrier, which
    costs more than the second thread gains on small operators (``python -m bench train``)."""
    if threads > 0:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, rank_cores() - workers)
