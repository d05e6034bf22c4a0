"""Table sources: TiC-YFCC's recipe, RedCaps' annotation files, plain URL lists, local images.

Oracles are hand-written: the expected caption strings, years and time steps of each row are
worked out by hand from the recipe (title. description. usertags, URL-unquoted, ftfy, HTML
removed, 500 characters; the upload year in UTC), not by running the code.
"""
from __future__ import annotations

import calendar
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmark_builder.specs import get_spec
from pipelines.fetch import FetchConfig, Fetcher
from pipelines.sources import redcaps, urllist, yfcc
from pipelines.sources.tables import TableOptions
from pipelines.transforms.crawl import check_inputs, read_file
from pipelines.transforms.split import first_fraction
from pipelines.uid import make_uid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def unix(y, mo, d, h=0, mi=0, s=0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


YFCC_HEADER = "key,dateuploaded,title,description,usertags,downloadurl\n"
LONG = "x" * 600
YFCC_ROWS = [  # (csv line, expected caption, expected year or the expected drop reason)
    (f'a1b2c3d4e5,{unix(2006, 5, 4, 12)},Sunset+over+the+bay,<b>Lovely</b> evening,"beach,san+francisco",http://img.example.org/1.jpg',
     "Sunset over the bay. Lovely evening. beach,san francisco", 2006),
    (f'f00ba4f00b,{unix(2011, 2, 1)},Caf%C3%A9+du+Monde,%3Ca+href%3D%22http%3A%2F%2Fx.org%22%3Elink%3C%2Fa%3E,,http://img.example.org/2.jpg',
     "Café du Monde. link. ", 2011),
    (f'0012345678,{unix(2008, 12, 31, 23, 59, 59)},CafÃ© on the corner,,,http://img.example.org/3.jpg',
     "Café on the corner. . ", 2008),
    (f'0099999999,{unix(2009, 1, 1, 0, 0, 0)},New+Year,fireworks <i>over</i> <br/>the river,night,http://img.example.org/4.jpg',
     "New Year. fireworks over the river. night", 2009),
    (f'abcabcabca,{unix(2014, 7, 7)},{LONG},,,http://img.example.org/5.jpg', "x" * 500, 2014),
    (f'deadbeef00,{unix(2015, 3, 3)},Too+late,,,http://img.example.org/6.jpg', None, "outside_years:2015"),
    (f'beefdead00,{unix(2003, 3, 3)},Too+early,,,http://img.example.org/7.jpg', None, "outside_years:2003"),
    ('cafecafe00,,No+date,,,http://img.example.org/8.jpg', None, "missing_time"),
]


def _yfcc_csv(tmp_path) -> str:
    p = tmp_path / "yfcc15m.csv"
    p.write_text(YFCC_HEADER + "\n".join(line for line, _, _ in YFCC_ROWS) + "\n", encoding="utf-8")
    return str(p)


def _rows(path, fmt, **opts):
    out = list(read_file(path, None, fmt, TableOptions(**opts)))
    assert out[-1][0] == "status" and out[-1][1]["status"] == "ok"
    return [r for k, r in out if k == "candidate"], [r for k, r in out[:-1] if k == "status"], out[-1][1]


def test_yfcc_caption_recipe_on_hand_written_values():
    assert yfcc.caption("Sunset+over+the+bay", "<b>Lovely</b> evening", "beach,san+francisco") == \
        "Sunset over the bay. Lovely evening. beach,san francisco"
    assert yfcc.caption("Caf%C3%A9", "", "") == "Café. . "
    assert yfcc.caption("100%25+real", "%3Cp%3Ehello%3C%2Fp%3E", "") == "100% real. hello. "
    assert yfcc.caption("", "", "") == ". . "
    assert yfcc.caption("a" * 498, "bcd", "") == "a" * 498 + ". "
    assert yfcc.image_path("d29f3a7a4a6c3c8e") == "d29/f3a/d29f3a7a4a6c3c8e.jpg"


def test_yfcc_rows_time_steps_and_captions(tmp_path):
    spec = get_spec("tic-yfcc")
    cands, drops, ok = _rows(_yfcc_csv(tmp_path), "yfcc", years=spec.years)
    want_kept = [(c, y) for _, c, y in YFCC_ROWS if c is not None]
    assert [(r["text"], r["year"]) for r in cands] == want_kept
    assert ok["n_candidates"] == 5
    assert sorted(r["reason"] for r in drops) == ["missing_time", "outside_years:2003", "outside_years:2015"]
    # the recipe's steps: {2004-2008}, {2009-2010}, {2011-2012}, {2013-2014}
    assert [spec.step_of(r["year"]).name for r in cands] == ["2004-2008", "2011-2012", "2004-2008", "2009-2010", "2013-2014"]
    assert [s.years for s in spec.time_steps] == [(2004, 2005, 2006, 2007, 2008), (2009, 2010), (2011, 2012), (2013, 2014)]
    first = cands[0]
    assert first["url"] == "http://img.example.org/1.jpg" and first["crawl_id"] == "yfcc15m:a1b2c3d4e5"
    assert first["uid"] == make_uid("http://img.example.org/1.jpg", "Sunset over the bay. Lovely evening. beach,san francisco")
    assert first["crawl_time"].isoformat() == "2006-05-04T12:00:00+00:00" and first["month"] == 5
    assert cands[2]["crawl_id"] == "yfcc15m:0012345678"  # a key of digits keeps its leading zeros


def test_yfcc_local_images_by_key(tmp_path):
    root = tmp_path / "images"
    cands, _, _ = _rows(_yfcc_csv(tmp_path), "yfcc", years=get_spec("tic-yfcc").years, image_root=str(root))
    assert cands[0]["url"] == f"file://{root}/a1b/2c3/a1b2c3d4e5.jpg"
    # the uid names the image by its place under the root: moving the folder keeps it
    assert cands[0]["uid"] == make_uid("a1b/2c3/a1b2c3d4e5.jpg", "Sunset over the bay. Lovely evening. beach,san francisco")


def test_redcaps_annotations(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    doc = {"info": {"subreddit": "pics", "year": 2018}, "annotations": [
        {"image_id": "8xyz01", "subreddit": "pics", "caption": "my  cat\non the sofa", "created_utc": unix(2018, 6, 1, 8),
         "url": "https://i.redd.it/8xyz01.jpg", "author": "a", "score": 3},
        {"image_id": "8xyz02", "subreddit": "pics", "caption": "old photo", "created_utc": float(unix(2016, 12, 31, 23)),
         "url": "https://i.redd.it/8xyz02.jpg"},
        {"image_id": "8xyz03", "subreddit": "pics", "created_utc": unix(2018, 1, 1), "url": "https://i.redd.it/8xyz03.jpg"},
        {"image_id": "../x", "subreddit": "pics", "caption": "escape", "created_utc": unix(2018, 1, 1), "url": "https://i.redd.it/x.jpg"},
    ]}
    path = ann / "pics_2018.json"
    path.write_text(json.dumps(doc))
    years = get_spec("tic-redcaps").years
    cands, drops, _ = _rows(str(path), "redcaps", years=years)
    assert [(r["text"], r["year"], r["url"], r["crawl_id"]) for r in cands] == [
        ("my cat on the sofa", 2018, "https://i.redd.it/8xyz01.jpg", "redcaps:pics/8xyz01")]
    assert sorted(r["reason"] for r in drops) == ["bad_annotation", "bad_annotation", "outside_years:2016"]
    local, _, _ = _rows(str(path), "redcaps", years=years, image_root=str(tmp_path / "img"))
    assert local[0]["url"] == f"file://{tmp_path}/img/pics/8xyz01.jpg"
    with pytest.raises(ValueError, match="not a RedCaps annotation file"):
        (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
        check_inputs([str(tmp_path / "bad.json")], "redcaps")


URL_ROWS = [  # (url, caption, time as written) -> expected (year, month) or drop reason
    ("http://a.example.org/1.jpg", "a red bicycle by the wall", "2019-03-04", (2019, 3)),
    ("http://a.example.org/2.jpg", "a  blue\tteapot", str(unix(2016, 11, 30, 23, 59)), (2016, 11)),
    ("http://a.example.org/3.jpg", "a green lighthouse", "2020-01-01T00:30:00+01:00", (2019, 12)),
    ("ftp://a.example.org/4.jpg", "not the web", "2019-01-01", "invalid_url:scheme"),
    ("http://a.example.org/5.jpg", "no time", "", "missing_time"),
    ("http://a.example.org/6.jpg", "from the future", "2031-05-05", "outside_years:2031"),
]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv"])
def test_url_list_formats(tmp_path, fmt):
    cols = {"image_url": [r[0] for r in URL_ROWS], "alt": [r[1] for r in URL_ROWS], "when": [r[2] for r in URL_ROWS]}
    path = tmp_path / f"urls.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table(cols), path)
    else:
        sep = "," if fmt == "csv" else "\t"
        lines = [sep.join(cols)] + [sep.join(f'"{c}"' if sep in c else c for c in r[:3]) for r in URL_ROWS]
        path.write_text("\n".join(lines) + "\n")
    years = get_spec("tic-datacomp").years
    with pytest.raises(ValueError, match="no column url"):
        check_inputs([str(path)], "url-list", TableOptions(years=years))
    cands, drops, _ = _rows(str(path), "url-list", years=years, url_col="image_url", caption_col="alt", time_col="when")
    assert [(r["url"], r["text"], (r["year"], r["month"])) for r in cands] == [
        ("http://a.example.org/1.jpg", "a red bicycle by the wall", (2019, 3)),
        ("http://a.example.org/2.jpg", "a blue teapot", (2016, 11)),
        ("http://a.example.org/3.jpg", "a green lighthouse", (2019, 12)),  # 2019-12-31T23:30 UTC
    ]
    assert [r["reason"] for r in drops] == ["invalid_url:scheme", "missing_time", "outside_years:2031"]


def test_url_list_parquet_timestamps_and_unix_numbers(tmp_path):
    import datetime as dt

    path = tmp_path / "u.parquet"
    pq.write_table(pa.table({"url": ["http://b.example.org/1.jpg", "http://b.example.org/2.jpg"],
                             "caption": ["one", "two"],
                             "time": pa.array([dt.datetime(2017, 8, 9, 10, tzinfo=dt.timezone.utc),
                                               dt.datetime(2021, 1, 2, tzinfo=dt.timezone.utc)])}), path)
    cands, _, _ = _rows(str(path), "url-list", years=get_spec("tic-datacomp").years)
    assert [(r["year"], r["month"]) for r in cands] == [(2017, 8), (2021, 1)]
    path2 = tmp_path / "n.parquet"
    pq.write_table(pa.table({"url": ["http://b.example.org/3.jpg"], "caption": ["three"], "time": [unix(2015, 6, 1)]}), path2)
    assert [r["year"] for r in _rows(str(path2), "url-list", years=(2015,))[0]] == [2015]


def test_bad_table_input_is_one_error_line(tmp_path, capsys):
    from benchmark_builder.__main__ import main

    bad = tmp_path / "yfcc.csv"
    bad.write_text("key,title\n1,a\n")
    assert main(["build", "tic-yfcc", "--data-dir", str(tmp_path / "d"), "--input", str(bad), "--lid", "langid"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {bad}: not a YFCC15M CSV: no column dateuploaded, description, usertags, downloadurl"]
    assert main(["build", "tic-redcaps", "--data-dir", str(tmp_path / "d"), "--input", str(tmp_path / "none*.json"),
                 "--lid", "langid"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: --input matched no files: ['{tmp_path}/none*.json']"]


def test_local_image_reads_are_confined_and_capped(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "ok.jpg").write_bytes(b"\xff\xd8" + b"x" * 100)
    (root / "a" / "big.jpg").write_bytes(b"\xff\xd8" + b"x" * 5000)
    (tmp_path / "secret.txt").write_text("no")
    f = Fetcher(FetchConfig(local_root=str(root), max_bytes=1000))
    assert f.fetch(f"file://{root}/a/ok.jpg").body == b"\xff\xd8" + b"x" * 100
    assert f.fetch(f"file://{root}/a/big.jpg").reason == "too_large"
    assert f.fetch(f"file://{root}/a/missing.jpg").reason == "file_not_found"
    assert f.fetch(f"file://{root}/a").reason == "unreadable_file"
    assert f.fetch(f"file://{root}/../secret.txt").reason == "invalid_url:file_outside_image_root"
    assert Fetcher(FetchConfig()).fetch(f"file://{root}/a/ok.jpg").reason == "invalid_url:file_outside_image_root"
    assert f.fetch("file://\x00").reason == f.fetch(f"file://{root}/a/ok\x00.jpg").reason == "invalid_url:file_path"


def test_one_percent_held_out_is_the_first_ceil_share_in_hash_order():
    ranked = [(f"{i:04d}", f"u{i}") for i in range(250, 0, -1)]
    assert first_fraction(ranked, 0.01) == {"u1", "u2", "u3"}  # ceil(2.5) = 3, smallest ranks
    assert first_fraction(ranked[:100], 0.01) == {"u151"}  # exactly 1% of 100 ranks 250..151
    assert first_fraction([], 0.01) == set()
