"""TiC-RedCaps' source: RedCaps annotation files -> candidates (the recipe of TiC-CLIP's
``dataset_creation/tic-redcaps/create_splits.py``).

Input: ``annotations/<subreddit>_<year>.json``, each ``{"info": ..., "annotations": [{"image_id",
"subreddit", "caption", "created_utc", "url", ...}]}``. One candidate per annotation: time
``created_utc`` (Unix seconds, UTC; RedCaps names each file by this year), caption as
released (RedCaps already cleaned it), image ``<subreddit>/<image_id>.jpg`` under
``--image-root`` when given, else ``url``. TiC-RedCaps' time steps are 2017, 2018, 2019, 2020; an
annotation of another year is ``outside_years:<year>``; one without the fields is
``bad_annotation``.
"""
from __future__ import annotations

import json
from typing import Iterator

from pipelines import io as pio
from pipelines.sources.tables import Rows, TableOptions

NAME = "redcaps"


def image_path(subreddit: str, image_id: str) -> str:
    return f"{subreddit}/{image_id}.jpg"


def read_file(path: str, source: str, opts: TableOptions) -> Iterator[tuple[str, dict]]:
    out = Rows(source, opts)
    with pio.open_read(path) as f:
        doc = json.loads(f.read())
    anns = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(anns, list):
        raise ValueError(f"{path}: not a RedCaps annotation file (no \"annotations\" list)")
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or not all(isinstance(ann.get(k), str) for k in ("image_id", "subreddit", "caption")):
            yield out.status(i, None, "bad_annotation")
            continue
        sub, image_id = ann["subreddit"], ann["image_id"]
        if "/" in sub or "/" in image_id or sub in ("", ".", "..") or image_id in ("", ".", ".."):
            yield out.status(i, f"redcaps:{sub}/{image_id}"[:200], "bad_annotation")
            continue
        yield out.candidate(i, f"redcaps:{sub}/{image_id}", ann.get("url"), " ".join(ann["caption"].split()),
                            ann.get("created_utc"), image_path(sub, image_id))
    yield out.done()
