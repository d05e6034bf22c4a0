"""Evaluation sets in clip_benchmark's WebDataset layout, readable by clip_benchmark unchanged.

```
<set>/dataset_type.txt                          retrieval | classification
<set>/classnames.txt                            one class name per line (classification)
<set>/zeroshot_classification_templates.txt     one template per line, "{c}" for the class
<set>/test/{0..N-1}.tar                         <key>.jpg, <key>.txt (captions, one per line) or
                                                <key>.cls (class id), <key>.json (metadata)
<set>/test/nshards.txt, <set>/test/count.txt
```
"""
from __future__ import annotations

from pipelines import io as pio
from pipelines.sinks.webdataset import tar_bytes

SPLIT = "test"


def write_eval_set(out_dir: str, kind: str, samples: list[dict], classnames: list[str] | None = None,
                   templates: list[str] | None = None, samples_per_shard: int = 10_000) -> int:
    """``samples``: dicts with ``key``, ``jpg`` and ``txt`` (retrieval) or ``cls`` (classification),
    plus an optional ``json``; written in the given order. Returns the sample count."""
    if kind not in ("retrieval", "classification"):
        raise ValueError(f"eval set kind must be retrieval or classification, got {kind!r}")
    shards = [samples[i:i + samples_per_shard] for i in range(0, len(samples), samples_per_shard)] or [[]]
    for i, chunk in enumerate(shards):
        pio.write_bytes(pio.join(out_dir, SPLIT, f"{i}.tar"), tar_bytes(chunk))
    pio.write_bytes(pio.join(out_dir, SPLIT, "nshards.txt"), f"{len(shards)}\n".encode())
    pio.write_bytes(pio.join(out_dir, SPLIT, "count.txt"), f"{len(samples)}\n".encode())
    if kind == "classification":
        pio.write_bytes(pio.join(out_dir, "classnames.txt"), ("\n".join(classnames or []) + "\n").encode())
        pio.write_bytes(pio.join(out_dir, "zeroshot_classification_templates.txt"),
                        ("\n".join(templates or ["a photo of a {c}."]) + "\n").encode())
    pio.write_bytes(pio.join(out_dir, "dataset_type.txt"), f"{kind}\n".encode())
    return len(samples)


def read_eval_set(set_dir: str) -> dict:
    """The files of an eval set written above (or by clip_benchmark's converters)."""
    def text(name):
        p = pio.join(set_dir, name)
        return pio.read_bytes(p).decode().strip() if pio.exists(p) else None

    nshards = int(text(f"{SPLIT}/nshards.txt"))
    return {
        "dataset_type": text("dataset_type.txt") or "classification",
        "classnames": (text("classnames.txt") or "").splitlines() or None,
        "templates": (text("zeroshot_classification_templates.txt") or "").splitlines() or None,
        "shards": [pio.join(set_dir, SPLIT, f"{i}.tar") for i in range(nshards)],
        "count": int(text(f"{SPLIT}/count.txt") or 0),
    }
