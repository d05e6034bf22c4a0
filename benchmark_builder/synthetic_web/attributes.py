"""What every served image of the synthetic web depicts, from the generator's own parameters.

Images are pure functions of (seed, image_id, year), so the object, colour, scene and texture
of any URL the server answers are known exactly. ``caption_attributes`` writes them as a table
keyed by URL: the input of the template captioner (procedurally generated data is captioned
from its generation parameters, as FoMo-in-Flux did for its synthetic datasets).
"""
from __future__ import annotations

import json
import os

import pyarrow as pa

from benchmark_builder.synthetic_web.images import image_params
from pipelines import io as pio

COLUMNS = ("object", "colour", "scene", "texture")


def caption_attributes(web_dir: str) -> pa.Table:
    with open(os.path.join(web_dir, "web.json")) as f:
        cfg = json.load(f)["config"]
    base = f"http://{cfg['host']}:{cfg['port']}"
    cat = pio.read_parquet([os.path.join(web_dir, "catalogue.parquet")], ["path", "image_id", "img_year", "size_kind"])
    rows = {}
    for r in cat.to_pylist():
        if r["image_id"] is None or r["size_kind"] == "pixel":
            continue
        p = image_params(int(cfg["seed"]), int(r["image_id"]), int(r["img_year"]), r["size_kind"] or "normal")
        rows[base + r["path"]] = (p.object_name, p.colour_name, p.scene_name, p.texture_name)
    urls = sorted(rows)
    return pa.table({"url": urls, **{c: [rows[u][i] for u in urls] for i, c in enumerate(COLUMNS)}})
