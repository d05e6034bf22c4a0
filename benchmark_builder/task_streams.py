"""Class- and domain-incremental task streams from standard local datasets.

Readers (nothing is downloaded; the formats are the published ones):

- ``cifar100``: the python pickle batches (``cifar-100-python/{train,test,meta}``; ``b"data"`` is
  N x 3072 uint8 in channel-major order, ``b"fine_labels"``, ``meta[b"fine_label_names"]``);
- ``domainnet``: ``<domain>/<class>/<image>`` folders with DomainNet's split files
  ``<domain>_train.txt`` / ``<domain>_test.txt`` (lines ``domain/class/image.jpg label``);
- ``imagefolder``: ``<root>/<class>/<image>`` (ImageNet's train layout), with ``train/`` and
  ``val/`` (or ``test/``) subfolders when the root has them, else a deterministic 80/20 split by
  file-name hash;
- ``synthetic-web``: the embedded web's concepts, rendered by its generator (the default).

Splits: class-incremental = a seeded permutation of the classes cut into ``n_tasks`` contiguous
chunks (the usual CIFAR-100 10 x 10 protocol); domain-incremental = one task per domain, all
classes in each. A stream is written as per-task WebDataset shards (``<key>.jpg``, ``.txt`` =
the class prompt, ``.cls`` = global class id, ``.json`` with ``uid``, ``text``, ``cls``,
``classname``, ``domain``, ``task``) through the project's reproducible shard writer, with a
``stream.json`` manifest: classes, class order, per-task classes/domains and counts.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from benchmark_builder.inputs import NAMED
from pipelines import io as pio
from pipelines.safe_inputs import InputError, load_pickle
from pipelines.sinks import webdataset as wds

PROMPT = "a photo of a {c}."  # the one template format: {c} is the class name (pipelines.models.encode)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class Item:
    key: str  # stable id within the dataset (path or index)
    cls: int
    domain: str
    load: Callable[[], bytes]  # encoded image bytes


@dataclass
class Dataset:
    name: str
    classnames: list[str]
    train: list[Item]
    test: list[Item]

    @property
    def domains(self) -> list[str]:
        return sorted({i.domain for i in self.train})


def _jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _file(path: str) -> Callable[[], bytes]:
    return lambda: pio.read_bytes(path)


def _cifar_field(d, key: bytes, path: str):
    if not isinstance(d, dict) or key not in d:
        raise InputError(f"{path}: not a CIFAR-100 python batch (no {key!r} entry)")
    return d[key]


def read_cifar100(root: str) -> Dataset:
    """CIFAR-100's pickles are read through a restricted unpickler (plain data only): a crafted
    file cannot run code, it is refused with an :class:`InputError` naming it."""
    base = root if os.path.exists(os.path.join(root, "meta")) else os.path.join(root, "cifar-100-python")
    if not os.path.exists(os.path.join(base, "meta")):
        raise FileNotFoundError(f"{root}: no cifar-100-python/{{train,test,meta}} (CIFAR-100 python version)")
    meta = os.path.join(base, "meta")
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _cifar_field(load_pickle(meta), b"fine_label_names", meta)]

    def split(name: str) -> list[Item]:
        path = os.path.join(base, name)
        d = load_pickle(path)
        raw = np.asarray(_cifar_field(d, b"data", path))
        if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != 3072:
            raise InputError(f"{path}: b'data' must be N x 3072 uint8, got {raw.shape} {raw.dtype}")
        data = raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = _cifar_field(d, b"fine_labels", path)
        if len(labels) != len(data):
            raise InputError(f"{path}: {len(data)} images but {len(labels)} labels")
        bad = next((i for i, c in enumerate(labels) if not 0 <= int(c) < len(names)), None)
        if bad is not None:
            raise InputError(f"{path}: label {labels[bad]} of image {bad} is not one of the {len(names)} classes in {meta}")
        return [Item(f"{name}/{i}", int(labels[i]), "cifar100", (lambda a=data[i]: _jpeg(a))) for i in range(len(data))]

    return Dataset("cifar100", names, split("train"), split("test"))


def read_domainnet(root: str, domains: list[str] | None = None) -> Dataset:
    """Split lines are ``<domain>/<class>/<image> <label>``; each is checked (shape, a label >= 0, a
    relative path inside ``root`` of that domain to an existing file, one label per class) and a
    bad one fails as ``<split file>:<line>: ...``."""
    found = sorted(f[: -len("_train.txt")] for f in os.listdir(root) if f.endswith("_train.txt"))
    domains = list(domains or found)
    missing = [d for d in domains if d not in found]
    if not domains or missing:
        raise FileNotFoundError(f"{root}: no DomainNet split files for {missing or 'any domain'} (<domain>_train.txt)")
    label_names: dict[int, str] = {}
    class_labels: dict[str, tuple[int, str]] = {}

    def split(kind: str) -> list[Item]:
        items = []
        for d in domains:
            path = os.path.join(root, f"{d}_{kind}.txt")
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{n}"
                    fields = line.split()
                    if len(fields) != 2 or not fields[1].isdigit():
                        raise InputError(f"{where}: expected 'domain/class/image label', got {line.strip()[:200]!r}")
                    rel, label = fields[0], int(fields[1])
                    parts = rel.split("/")
                    if len(parts) != 3 or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
                        raise InputError(f"{where}: image path {rel!r} is not 'domain/class/image' inside {root}")
                    if parts[0] != d:
                        raise InputError(f"{where}: image {rel!r} is not in domain {d!r}")
                    first = class_labels.setdefault(parts[1], (label, where))
                    if first[0] != label or label_names.setdefault(label, parts[1]) != parts[1]:
                        other = first[1] if first[0] != label else f"class {label_names[label]!r}"
                        raise InputError(f"{where}: label {label} for class {parts[1]!r} conflicts with {other}")
                    file = os.path.join(root, rel)
                    if not os.path.isfile(file):
                        raise InputError(f"{where}: image {rel!r} does not exist under {root}")
                    items.append(Item(rel, label, d, _file(file)))
        return items

    train, test = split("train"), split("test")
    n = max(label_names) + 1 if label_names else 0
    if not train:
        raise InputError(f"{root}: the split files of {domains} list no training images")
    return Dataset("domainnet", [label_names.get(i, f"class_{i}") for i in range(n)], train, test)


def read_image_folder(root: str, name: str = "imagefolder") -> Dataset:
    def scan(d: str) -> dict[str, list[str]]:
        return {c: sorted(os.path.join(d, c, f) for f in os.listdir(os.path.join(d, c)) if f.lower().endswith(IMAGE_EXTS))
                for c in sorted(os.listdir(d)) if os.path.isdir(os.path.join(d, c))}

    test_dir = next((os.path.join(root, s) for s in ("val", "test") if os.path.isdir(os.path.join(root, s))), None)
    if os.path.isdir(os.path.join(root, "train")) and test_dir:
        tr, te = scan(os.path.join(root, "train")), scan(test_dir)
    else:
        tr, te = {}, {}
        for c, files in scan(root).items():
            for f in files:  # 80/20 by file-name hash: stable when files are added
                (te if int(hashlib.sha256(os.path.relpath(f, root).encode()).hexdigest()[:8], 16) % 5 == 0 else tr
                 ).setdefault(c, []).append(f)
    classes = sorted(set(tr) | set(te))
    if not classes:
        raise FileNotFoundError(f"{root}: no class folders with images")
    idx = {c: i for i, c in enumerate(classes)}

    def items(d):
        return [Item(os.path.relpath(f, root), idx[c], name, _file(f)) for c in sorted(d) for f in d[c]]

    return Dataset(name, classes, items(tr), items(te))


SYNTHETIC_PER_CLASS = (200, 50)  # (train, test) renders per concept of the embedded default stream


def rendered(name: str, per_class_train: int = SYNTHETIC_PER_CLASS[0], per_class_test: int = SYNTHETIC_PER_CLASS[1],
             seed: int = 0, size: int = 64) -> Dataset:
    """A named input's concepts, rendered by its generator (``synthetic-web``: the default class-incremental stream)."""
    source = NAMED[name]
    train, test = source.task_items(per_class_train, per_class_test, seed, size)
    return Dataset(name, list(source.class_names()), [Item(*t) for t in train], [Item(*t) for t in test])


def load_dataset(dataset: str, path: str = "", domains: list[str] | None = None, seed: int = 0,
                 synthetic_per_class: tuple[int, int] = SYNTHETIC_PER_CLASS) -> Dataset:
    """``synthetic_per_class`` = (train, test) renders per concept of a named input (``synthetic-web``)."""
    if dataset in NAMED:
        return rendered(dataset, *synthetic_per_class, seed=seed)
    if not path:
        raise ValueError(f"--data PATH is needed for {dataset!r} (nothing can be downloaded)")
    if dataset == "cifar100":
        return read_cifar100(path)
    if dataset == "domainnet":
        return read_domainnet(path, domains)
    if dataset in ("imagefolder", "imagenet"):
        return read_image_folder(path, dataset)
    raise ValueError(f"unknown dataset {dataset!r}: cifar100, domainnet, imagenet, imagefolder, {', '.join(NAMED)}")


# ------------------------------------------------------------------------------------ splits

def class_incremental(n_classes: int, n_tasks: int, seed: int = 0) -> tuple[list[int], list[list[int]]]:
    """(class order, classes per task): a seeded permutation cut into contiguous chunks."""
    if not 1 <= n_tasks <= n_classes:
        raise ValueError(f"need 1 <= tasks <= classes, got {n_tasks} tasks for {n_classes} classes")
    order = np.random.default_rng(seed).permutation(n_classes).tolist()
    return order, [list(map(int, c)) for c in np.array_split(order, n_tasks)]


@dataclass
class Task:
    name: str
    classes: list[int]
    domains: list[str]

    def holds(self, item: Item) -> bool:
        return item.cls in self.classes and item.domain in self.domains


def make_tasks(ds: Dataset, kind: str, n_tasks: int, seed: int = 0) -> tuple[list[Task], list[int]]:
    if kind == "cil":
        order, chunks = class_incremental(len(ds.classnames), n_tasks, seed)
        return [Task(f"task{t}", c, ds.domains) for t, c in enumerate(chunks)], order
    if kind == "dil":
        domains = ds.domains
        every = list(range(len(ds.classnames)))
        return [Task(f"task{t}-{d}", every, [d]) for t, d in enumerate(domains)], every
    raise ValueError(f"unknown stream kind {kind!r}: cil or dil")


def uid_of(dataset: str, split: str, key: str) -> str:
    return hashlib.sha256(f"{dataset}/{split}/{key}".encode()).hexdigest()[:32]


def _samples(ds: Dataset, items: list[Item], split: str, task: int) -> Iterator[dict]:
    for i, it in enumerate(sorted(items, key=lambda x: uid_of(ds.name, split, x.key))):
        uid = uid_of(ds.name, split, it.key)
        name = ds.classnames[it.cls]
        text = PROMPT.format(c=name.replace("_", " "))
        yield {"key": uid, "jpg": it.load(), "txt": text, "cls": it.cls,
               "json": {"uid": uid, "text": text, "cls": it.cls, "classname": name, "domain": it.domain, "task": task,
                        "source_key": it.key}}


def write_stream(ds: Dataset, out_dir: str, kind: str = "cil", n_tasks: int = 10, seed: int = 0,
                 samples_per_shard: int = 10_000) -> dict:
    """Per-task train/test shards + ``stream.json``; returns the manifest."""
    tasks, order = make_tasks(ds, kind, n_tasks, seed)
    manifest = {"dataset": ds.name, "kind": kind, "seed": seed, "n_tasks": len(tasks), "classnames": ds.classnames,
                "class_order": order, "prompt": PROMPT, "tasks": []}
    for t, task in enumerate(tasks):
        row = {"name": task.name, "classes": task.classes, "domains": task.domains}
        for split, items in (("train", ds.train), ("test", ds.test)):
            mine = [it for it in items if task.holds(it)]
            d = pio.join(out_dir, task.name, split)
            samples = list(_samples(ds, mine, split, t))
            sizes = {}
            for s in range(0, max(1, len(samples)), samples_per_shard):
                chunk = samples[s:s + samples_per_shard]
                if not chunk:
                    break
                path = wds.write_shard(d, s // samples_per_shard, chunk, {"count": len(chunk), "task": task.name})
                sizes[os.path.basename(path)] = len(chunk)
            pio.write_json(pio.join(d, "sizes.json"), sizes)
            row[split] = len(samples)
        if not row["train"]:
            raise ValueError(f"{ds.name}: task {task.name} has no training images")
        manifest["tasks"].append(row)
    pio.write_json(pio.join(out_dir, "stream.json"), manifest)
    return manifest


def read_manifest(out_dir: str) -> dict:
    path = pio.join(out_dir, "stream.json")
    if not pio.exists(path):
        raise FileNotFoundError(f"{out_dir}: no stream.json (write the stream first)")
    return pio.read_json(path)
