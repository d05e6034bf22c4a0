"""Concept streams (FoMo-in-Flux, Roth et al. 2024): an ordered list of concepts chunked into T tasks.

A concept is a (dataset, class) pair; on the embedded default the dataset is the synthetic
web and its classes are the web's objects (``benchmark_builder.classes.class_list``). The
samples of a concept are the variant's training samples whose alt text names it (any of its
synonyms as a whole word; the generated caption when the alt text names none); a sample that
names two concepts belongs to neither. A concept's training data is then a ``Source`` with a
uid set over the shards that hold it, so the stream reads the benchmark's own shards.

Orderings (each seeded, each also ``reverse-<order>``):

- ``random``: a seeded shuffle;
- ``semantic``: a chain in which consecutive concepts are nearest neighbours in the base
  model's text-embedding space ("a photo of a {c}."), from a seeded start;
- ``frequency``: rare to common by the number of pretraining-pool captions naming the concept;
- ``performance``: easy to hard, by the base model's zero-shot top-1 accuracy on up to
  ``perf_samples`` training images of the concept (training data: the held-out sets stay unseen);
- ``time``: by first-seen year (the first year in which the concept has at least 5% of its
  peak yearly count; ties by peak year), each concept in one task (contiguous);
- ``time-interleaved``: the stream's items are (concept, year) slices ordered by year, so a
  concept recurs in the tasks of every year it is seen in.

``holdout`` concepts (seeded) never enter the stream: the evaluator uses them for zero-shot
retention. The stream, with the key each ordering sorted by, is saved as JSON with the run.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from benchmark_builder.classes import class_list, class_words
from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines.models.encode import encode_images, encode_texts, fill, zero_shot_classifier
from pipelines.sinks import webdataset as wds
from pipelines.models.encode import decode_image
from training.data import Source

ORDERS = ("random", "semantic", "frequency", "performance", "time", "time-interleaved")
ALL_ORDERS = ORDERS + tuple(f"reverse-{o}" for o in ORDERS)
DEFAULT_POOL_YEARS = (2014, 2015, 2016)  # the years the embedded base model was pretrained on


@dataclass(frozen=True)
class Item:
    """One stream element: a concept, or the slice of a concept first seen in ``year``."""
    concept: str
    year: int | None = None

    @property
    def key(self) -> str:
        return self.concept if self.year is None else f"{self.concept}@{self.year}"


@dataclass
class ConceptIndex:
    """Which training samples name which concept, per year and shard."""
    dataset: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    samples: dict[str, list[tuple[str, int, str]]]  # concept -> [(uid, year, shard)]
    pool_years: tuple[int, ...]
    unmatched: int = 0
    ambiguous: int = 0

    def yearly_counts(self, concept: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for _, y, _ in self.samples.get(concept, []):
            out[y] = out.get(y, 0) + 1
        return dict(sorted(out.items()))

    def pool_count(self, concept: str) -> int:
        return sum(1 for _, y, _ in self.samples.get(concept, []) if y in self.pool_years)

    def first_seen(self, concept: str, min_share: float = 0.05) -> int:
        counts = self.yearly_counts(concept)
        if not counts:
            return 10**4
        top = max(counts.values())
        return min(y for y, c in counts.items() if c >= max(1, min_share * top))

    def peak_year(self, concept: str) -> int:
        counts = self.yearly_counts(concept)
        return max(counts, key=lambda y: (counts[y], -y)) if counts else 10**4

    def item_samples(self, item: Item) -> list[tuple[str, int, str]]:
        rows = self.samples.get(item.concept, [])
        return rows if item.year is None else [r for r in rows if r[1] == item.year]


def _matcher(words: dict[str, tuple[str, ...]]):
    pats = {c: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in ws) + r")(?:s|es)?\b", re.I) for c, ws in words.items()}

    def match(text: str) -> set[str]:
        return {c for c, p in pats.items() if text and p.search(text)}

    return match


def build_index(data_dir: str, variant: str = "basic", benchmark: str = "tic-datacomp", dataset: str = "synthetic-web",
                pool_years=DEFAULT_POOL_YEARS) -> ConceptIndex:
    """Scan the variant's training shards (JSON members only) and assign each sample to the concept its caption names."""
    classnames, templates = class_list(dataset)
    match = _matcher(class_words(dataset, classnames))
    layout = Layout(data_dir, benchmark)
    samples: dict[str, list] = {c: [] for c in classnames}
    unmatched = ambiguous = 0
    years = sorted(int(os.path.basename(d)) for d in pio.glob(pio.join(layout.variant(variant), "train", "*"))
                   if os.path.basename(d).isdigit())
    if not years:
        raise FileNotFoundError(f"no training shards under {layout.variant(variant)}/train: build the benchmark first")
    for year in years:
        d = layout.train_shards(variant, year)
        if not pio.exists(pio.join(d, "sizes.json")):
            continue
        for shard in sorted(pio.read_json(pio.join(d, "sizes.json"))):
            path = pio.join(d, shard)
            for s in wds.iter_samples(path, keys=("json",)):
                meta = json.loads(s["json"])
                found = match(meta.get("text") or "") or match(meta.get("caption_generated") or "")
                if len(found) == 1:
                    samples[found.pop()].append((meta["uid"], int(meta.get("year") or year), path))
                elif found:
                    ambiguous += 1
                else:
                    unmatched += 1
    return ConceptIndex(dataset, tuple(classnames), tuple(templates), samples, tuple(pool_years), unmatched, ambiguous)


# ---------------------------------------------------------------------------- orderings

def _text_embeddings(model, tokenizer, names, device="cpu") -> np.ndarray:
    return encode_texts(model, tokenizer, [fill("a photo of a {c}.", c) for c in names], device).numpy()


def semantic_chain(emb: np.ndarray, start: int) -> tuple[list[int], list[float]]:
    """Greedy nearest-neighbour chain through cosine similarities: each next concept is the
    unvisited one closest to the current one. Returns (order, similarity to the predecessor)."""
    sim = emb @ emb.T
    order, sims = [start], [1.0]
    left = set(range(len(emb))) - {start}
    while left:
        cur = order[-1]
        nxt = max(sorted(left), key=lambda j: sim[cur, j])
        order.append(nxt)
        sims.append(float(sim[cur, nxt]))
        left.remove(nxt)
    return order, sims


def zero_shot_accuracy(model, preprocess, tokenizer, index: ConceptIndex, concepts, per_concept: int = 32,
                       seed: int = 0, device="cpu") -> dict[str, float]:
    """The base model's top-1 zero-shot accuracy per concept over all the dataset's classes, on
    up to ``per_concept`` training images of the concept (uid-seeded choice)."""
    want: dict[str, str] = {}
    for c in concepts:
        rows = sorted(index.samples.get(c, []))
        random.Random(f"{seed}/{c}").shuffle(rows)
        want.update({uid: c for uid, _, _ in rows[:per_concept]})
    shards = sorted({sh for c in concepts for uid, _, sh in index.samples.get(c, []) if uid in want})
    images, labels = [], []
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    for shard in shards:
        for s in wds.iter_samples(shard):
            uid = json.loads(s["json"])["uid"]
            if uid in want:
                images.append(preprocess(decode_image(s["jpg"], size)))
                labels.append(index.classnames.index(want[uid]))
    clf = zero_shot_classifier(model, tokenizer, index.classnames, index.templates, device)
    pred = (encode_images(model, images, device) @ clf).argmax(1) if images else torch.empty(0, dtype=torch.long)
    labels_t = torch.tensor(labels)
    out = {}
    for c in concepts:
        m = labels_t == index.classnames.index(c)
        out[c] = float((pred[m] == labels_t[m]).float().mean()) if m.any() else 0.0
    return out


@dataclass
class Stream:
    order: str
    seed: int
    n_tasks: int
    dataset: str
    tasks: list[list[str]]  # item keys per task ("circle" or "circle@2016")
    holdout: list[str]
    pool_years: list[int]
    keys: dict[str, float] = field(default_factory=dict)  # what the ordering sorted by, per concept
    sizes: list[int] = field(default_factory=list)  # training samples per task

    @property
    def concepts(self) -> list[str]:
        return list(dict.fromkeys(k.split("@")[0] for task in self.tasks for k in task))

    def items(self, t: int) -> list[Item]:
        return [Item(k.split("@")[0], int(k.split("@")[1]) if "@" in k else None) for k in self.tasks[t]]

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path: str) -> "Stream":
        with open(path) as f:
            return cls(**json.load(f))


def chunk(items: list, n: int) -> list[list]:
    """``n`` contiguous chunks whose sizes differ by at most one (earlier chunks take the extra)."""
    if not 1 <= n <= len(items):
        raise ValueError(f"cannot split {len(items)} stream items into {n} tasks")
    q, r = divmod(len(items), n)
    out, i = [], 0
    for k in range(n):
        size = q + (1 if k < r else 0)
        out.append(items[i:i + size])
        i += size
    return out


def pick_holdout(concepts, n: int, seed: int) -> list[str]:
    if n <= 0:
        return []
    if n >= len(concepts):
        raise ValueError(f"holding out {n} of {len(concepts)} concepts leaves none to adapt to")
    rng = random.Random(f"holdout/{seed}")
    return sorted(rng.sample(sorted(concepts), n))


def order_concepts(index: ConceptIndex, order: str, seed: int = 0, concepts=None, loaded=None,
                   perf_samples: int = 32, device: str = "cpu") -> tuple[list[Item], dict[str, float]]:
    """The stream's items in ``order`` and the per-concept key they were sorted by. ``loaded``
    (a ``pipelines.models.LoadedModel``, the base model) is needed by semantic and performance."""
    reverse = order.startswith("reverse-")
    base = order[len("reverse-"):] if reverse else order
    if base not in ORDERS:
        raise ValueError(f"unknown ordering {order!r}; valid: {', '.join(ALL_ORDERS)}")
    concepts = sorted(c for c in (concepts or index.classnames) if index.samples.get(c))
    keys: dict[str, float] = {}
    if base == "random":
        seq = list(concepts)
        random.Random(f"order/{seed}").shuffle(seq)
        keys = {c: float(i) for i, c in enumerate(seq)}
    elif base == "semantic":
        if loaded is None:
            raise ValueError("the semantic ordering needs the base model's text encoder")
        emb = _text_embeddings(loaded.model, loaded.tokenizer, concepts, device)
        idx, sims = semantic_chain(emb, random.Random(f"order/{seed}").randrange(len(concepts)))
        seq = [concepts[i] for i in idx]
        keys = {concepts[i]: s for i, s in zip(idx, sims)}
    elif base == "frequency":
        keys = {c: float(index.pool_count(c)) for c in concepts}
        seq = sorted(concepts, key=lambda c: (keys[c], c))
    elif base == "performance":
        if loaded is None:
            raise ValueError("the performance ordering needs the base model")
        keys = zero_shot_accuracy(loaded.model, loaded.preprocess_val, loaded.tokenizer, index, concepts, perf_samples,
                                  seed, device)
        seq = sorted(concepts, key=lambda c: (-keys[c], c))
    else:  # time, time-interleaved
        keys = {c: float(index.first_seen(c)) for c in concepts}
        seq = sorted(concepts, key=lambda c: (keys[c], index.peak_year(c), c))
    if base == "time-interleaved":
        items = sorted((Item(c, y) for c in seq for y in index.yearly_counts(c)),
                       key=lambda it: (it.year, seq.index(it.concept)))
    else:
        items = [Item(c) for c in seq]
    return (items[::-1] if reverse else items), keys


def make_stream(index: ConceptIndex, order: str, n_tasks: int, seed: int = 0, holdout: int = 4, loaded=None,
                device: str = "cpu") -> Stream:
    """Order the non-held-out concepts and chunk the items into ``n_tasks`` tasks."""
    present = [c for c in index.classnames if index.samples.get(c)]
    held = pick_holdout(present, holdout, seed)
    items, keys = order_concepts(index, order, seed, [c for c in present if c not in held], loaded, device=device)
    tasks = chunk(items, n_tasks)
    return Stream(order, seed, n_tasks, index.dataset, [[it.key for it in task] for task in tasks], held,
                  list(index.pool_years), {c: round(v, 6) for c, v in keys.items()},
                  [sum(len(index.item_samples(it)) for it in task) for task in tasks])


# ---------------------------------------------------------------------------- data

def task_sources(stream: Stream, index: ConceptIndex) -> list[Source]:
    """One ``Source`` per task: the uid set of its items over the shards that hold them."""
    out = []
    for t in range(len(stream.tasks)):
        rows = [r for it in stream.items(t) for r in index.item_samples(it)]
        if not rows:
            raise ValueError(f"task {t} ({stream.tasks[t]}) has no training samples")
        out.append(Source(f"task-{t}", tuple(sorted({sh for _, _, sh in rows})), len(rows),
                          uids=frozenset(uid for uid, _, _ in rows)))
    return out


def pool_source(data_dir: str, variant: str, years, benchmark: str = "tic-datacomp") -> Source:
    """The pretraining pool: every training sample of the years the base model was trained on."""
    layout = Layout(data_dir, benchmark)
    shards, size = [], 0
    for y in years:
        d = layout.train_shards(variant, y)
        sizes = pio.read_json(pio.join(d, "sizes.json"))
        shards += [pio.join(d, s) for s in sorted(sizes)]
        size += sum(sizes.values())
    return Source("pool", tuple(shards), size)
