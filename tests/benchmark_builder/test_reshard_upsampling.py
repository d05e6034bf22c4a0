"""DataComp's resharder upsampling: a uid file that repeats a uid c times gives c copies keyed
``<uid>-<j>``, through the real reshard Beam pipeline over a hand-made pool (metadata Parquet +
pool shards), read back with the webdataset library."""
from __future__ import annotations

import collections
import json
import os

import numpy as np
import webdataset as wds_lib

from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines import schema
from pipelines import uid as uidcodec
from pipelines.sinks import webdataset as wds
from pipelines.uid import make_uid

YEARS = (2014, 2015)


def _hand_made_pool(root: str):
    from benchmark_builder.synthetic_web.images import draw, encode, image_params

    layout = Layout(root)
    uids = {}
    for year in YEARS:
        rows, samples = [], []
        for i in range(6):
            uid = make_uid(f"http://x/{year}/{i}.jpg", f"caption {i}")
            split = "eval_retrieval" if i == 5 else "train"
            dedup = "duplicate_of:" + "0" * 32 if i == 4 else None
            rows.append({"uid": uid, "year": year, "text": f"a photo number {i}", "split": split, "dedup_reason": dedup,
                         "filters": ["none", "basic"] if not dedup else []})
            img = draw(image_params(0, year * 100 + i, year))
            img.thumbnail((32, 32))
            samples.append({"key": uid, "jpg": encode(img)})
            uids[(year, i)] = uid
        pio.write_parquet(pio.join(layout.metadata(year), wds.shard_name(0) + ".parquet"), schema.to_table(rows, schema.SAMPLE))
        wds.write_shard(pio.join(layout.pool(year), "shards"), 0, samples, {"count": len(samples)})
        pio.write_json(layout.year_manifest(year), {"year": year})
    return layout, uids


def _shard_keys(layout: Layout, name: str, year: int) -> tuple[list[str], dict]:
    d = pio.local_path(layout.train_shards(name, year))
    sizes = json.load(open(os.path.join(d, "sizes.json")))
    keys = []
    for tar, n in sorted(sizes.items()):
        samples = list(wds_lib.WebDataset(os.path.join(d, tar), shardshuffle=False))
        assert len(samples) == n
        for s in samples:
            meta = json.loads(s["json"])
            assert s["__key__"] == meta["key"] and s["__key__"].startswith(meta["uid"] + "-")
            keys.append(s["__key__"])
    return keys, sizes


def test_uid_file_with_repeats_writes_count_copies_keyed_uid_j(tmp_path):
    from benchmark_builder.captioning import variant_uids
    from benchmark_builder.reshard import reshard, select_uids

    layout, u = _hand_made_pool(str(tmp_path / "data"))
    # the subset file: 2014 #0 x3, #1 x1, #2 x2; 2015 #3 x4, #0 x1; a duplicate (#4) x2, a held-out
    # eval sample (#5) x2 and a uid not in the pool x2, all in DataComp's codec (sorted u8,u8)
    stray = "f" * 32
    listed = ([u[2014, 0]] * 3 + [u[2014, 1]] + [u[2014, 2]] * 2 + [u[2015, 3]] * 4 + [u[2015, 0]]
              + [u[2014, 4]] * 2 + [u[2015, 5]] * 2 + [stray] * 2)
    subset = tmp_path / "subset.npy"
    np.save(subset, uidcodec.encode(listed))
    selected = select_uids(layout, str(subset))
    assert selected[u[2014, 0]] == 3 and selected[u[2015, 3]] == 4 and selected[stray] == 2

    report = reshard(layout, "upsampled", selected, samples_per_shard=4)

    expected = {2014: {u[2014, 0]: 3, u[2014, 1]: 1, u[2014, 2]: 2}, 2015: {u[2015, 3]: 4, u[2015, 0]: 1}}
    for year in YEARS:
        keys, sizes = _shard_keys(layout, "upsampled", year)
        want = sorted(f"{uid}-{j}" for uid, c in expected[year].items() for j in range(c))
        assert keys == want  # exactly these keys, in uid then copy order, each once
        assert sum(sizes.values()) == sum(expected[year].values())
        assert max(sizes.values()) <= 4 and len(sizes) == -(-sum(expected[year].values()) // 4)
    assert report["selected"] == len(listed) == 17 and report["distinct"] == 8
    assert report["written"] == 5 and report["copies_written"] == 11
    assert report["excluded_duplicate"] == 1 and report["excluded_eval"] == 1 and report["not_in_pool"] == 1
    written = collections.Counter(uidcodec.decode(np.load(pio.local_path(pio.join(layout.variant("upsampled"), "uids.npy")))))
    assert written == collections.Counter({uid: c for per_year in expected.values() for uid, c in per_year.items()})

    # a rewrite (what captioning does after adding columns) keeps the copies and the key style
    counts, have = variant_uids(layout, "upsampled", list(YEARS))
    assert counts == written and have == list(YEARS)
    reshard(layout, "upsampled", counts, have, samples_per_shard=4, rewrite=True)
    for year in YEARS:
        keys, _ = _shard_keys(layout, "upsampled", year)
        assert keys == sorted(f"{uid}-{j}" for uid, c in expected[year].items() for j in range(c))


def test_locate_places_each_copy():
    from pipelines.transforms import reshard as rs

    a, b, c = "a" * 32, "b" * 32, "c" * 32
    order = [a, b, b, b, c]
    cfg = rs.ReshardConfig(samples_per_shard=2, keys="uid")
    assert [rs.locate(order, b, cfg, j) for j in range(3)] == [("00000000", f"{b}-0"), ("00000001", f"{b}-1"),
                                                                ("00000001", f"{b}-2")]
    assert rs.locate(order, c, cfg) == ("00000002", f"{c}-0")
    img = rs.ReshardConfig(samples_per_shard=2)
    assert [rs.locate(order, b, img, j)[1] for j in range(3)] == ["000001", "000010", "000011"]
    import pytest

    with pytest.raises(KeyError):
        rs.locate(order, b, cfg, 3)
    with pytest.raises(KeyError):
        rs.locate(order, a, cfg, 1)
