"""The embedded synthetic web: deterministic, real WARC, real faults, real drift."""
from __future__ import annotations

import collections
import os
import socket
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest
from fastwarc.warc import ArchiveIterator
from warcio.archiveiterator import ArchiveIterator as WarcioIterator

from benchmark_builder.synthetic_web import SyntheticWebServer, WebConfig, generate_web
from tests.conftest import tree_sha256


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("web") / "w")
    cfg = WebConfig(pairs_per_year=300, port=free_port(), slow_seconds=1.5)
    return d, cfg, generate_web(d, cfg)


def test_generation_is_deterministic_and_idempotent(web, tmp_path):
    d, cfg, manifest = web
    again = str(tmp_path / "again")
    generate_web(again, cfg)
    assert tree_sha256(d) == tree_sha256(again)
    assert generate_web(d, cfg) == manifest  # reused, not regenerated


def test_warc_files_are_real_and_dated_in_their_year(web):
    d, cfg, manifest = web
    for year, files in manifest["warc_files"].items():
        assert files and all("CC-MAIN-" + year in f for f in files)
        intact = [f for f in files if not any(m["file"] == f for m in manifest["malformed"])]
        for f in intact[:1]:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                recs = [(r.headers.get("WARC-Type"), r.headers.get("WARC-Date")) for r in ArchiveIterator(fh)]
            with open(path, "rb") as fh:
                types = [r.rec_type for r in WarcioIterator(fh)]
            assert recs[0][0] == "warcinfo" and types[0] == "warcinfo"
            assert {"request", "response", "metadata"} <= set(types)
            assert all(date.startswith(year) for _, date in recs)
    kinds = collections.Counter(m["kind"] for m in manifest["malformed"])
    assert kinds["not_http"] == kinds["bad_content_length"] == len(cfg.years) and kinds["truncated_archive"] >= 2


def test_ground_truth_plants_every_fault_and_drift(web):
    d, cfg, _ = web
    gt = pq.read_table(os.path.join(d, "ground_truth.parquet")).to_pandas()
    assert len(gt) == cfg.pairs_per_year * len(cfg.years)
    assert set(cfg.faults) | {"private_address"} <= set(gt.fault) | {"redirect_private", "too_large", "slow"}
    assert {"identical", "reencoded", "resized"} <= set(gt.rehost_kind)
    assert gt.repeated_url_from.notna().sum() > 0
    assert {"one_word", "non_english"} <= set(gt.text_kind)
    early = gt[gt.year <= 2015].concept.value_counts(normalize=True)
    late = gt[gt.year >= 2021].concept.value_counts(normalize=True)
    assert "drone" not in early.index and late.get("drone", 0) > 0.05
    assert early.get("circle", 0) > 2 * late.get("circle", 0)


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_server_serves_planted_faults(web):
    d, cfg, _ = web
    cat = pq.read_table(os.path.join(d, "catalogue.parquet")).to_pandas()
    first = {f: cat[cat.fault == f].iloc[0] for f in ("", "http_404", "http_503", "noai", "noimageai", "redirect", "redirect_private",
                                                      "not_image", "truncated", "corrupt")}
    with SyntheticWebServer(d) as srv:
        base = srv.base_url
        code, h, body = _get(base + first[""].path)
        assert code == 200 and body[:2] in (b"\xff\xd8", b"\x89P", b"RI", b"GI")
        assert _get(base + first[""].path)[2] == body  # same bytes every time
        assert _get(base + first["http_404"].path)[0] == 404
        assert _get(base + first["http_503"].path)[0] == 503
        assert _get(base + first["noai"].path)[1]["X-Robots-Tag"] == "noai"
        assert "noimageai" in _get(base + first["noimageai"].path)[1]["X-Robots-Tag"]
        assert _get(base + first["not_image"].path)[1]["Content-Type"].startswith("text/html")
        from PIL import Image
        import io as _io

        for broken in ("truncated", "corrupt"):
            with pytest.raises(Exception):
                Image.open(_io.BytesIO(_get(base + first[broken].path)[2])).load()
        req = urllib.request.Request(base + first["redirect_private"].path)
        opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,), {"redirect_request": lambda *a, **k: None}))
        try:
            opener.open(req, timeout=5)
        except urllib.error.HTTPError as e:
            assert e.code == 302 and e.headers["Location"].startswith("http://10.")
        rehosts = cat[cat.rehost_kind == "identical"].iloc[0]
        orig = cat[(cat.image_id == rehosts.image_id) & (cat.rehost_kind == "") & (cat.fault == "")]
        if len(orig):
            assert _get(base + rehosts.path)[2] == _get(base + orig.iloc[0].path)[2]
        reenc = cat[cat.rehost_kind == "reencoded"].iloc[0]
        orig = cat[(cat.image_id == reenc.image_id) & (cat.rehost_kind == "")]
        if len(orig):
            assert _get(base + reenc.path)[2] != _get(base + orig.iloc[0].path)[2]


def test_busy_port_gives_a_clear_error(web):
    d, cfg, _ = web
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", cfg.port))
        s.listen()
        with pytest.raises(RuntimeError, match=str(cfg.port)):
            SyntheticWebServer(d, subprocess=True).start()


def test_server_workers_end_with_a_killed_build(web):
    """A build SIGKILLed mid-download must not leave its server workers behind: they hold the web's
    port, and the re-run that resumes the build could not serve."""
    import signal
    import subprocess
    import sys
    import time

    from benchmark_builder.synthetic_web.server import port_is_free

    d, cfg, _ = web
    code = ("import sys, time; from benchmark_builder.synthetic_web import SyntheticWebServer; "
            f"s = SyntheticWebServer({d!r}, subprocess=True, workers=2).start(); "
            "print(' '.join(str(p.pid) for p in s._procs), flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2 and not port_is_free(cfg.port)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    def alive(pid):  # a zombie (not reaped yet by the init it was re-parented to) counts as gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not port_is_free(cfg.port) or any(map(alive, workers))):
        time.sleep(0.2)
    assert port_is_free(cfg.port) and not any(map(alive, workers))


def _draw_reference(p):
    """The procedural image drawn the plain way (a broadcast gradient, the texture tile pasted tile
    by tile, two full-size composites): the fast path in ``images.draw`` must give the same pixels."""
    import math

    import numpy as np
    from PIL import Image, ImageChops, ImageDraw

    from benchmark_builder.synthetic_web import images as im

    r = im.rng_for(p.noise_seed, 1)
    top, bottom = (np.array(c, dtype=np.float32) for c in im._SCENE_COLOURS[p.scene_name])
    t = np.linspace(0, 1, p.height, dtype=np.float32)[:, None]
    column = (top * (1 - t) + bottom * t).astype(np.uint8)[:, None, :]
    img = Image.fromarray(np.ascontiguousarray(np.broadcast_to(column, (p.height, p.width, 3))), "RGB")
    d = ImageDraw.Draw(img)
    if p.scene_name == "sea":
        for y in range(int(r.integers(0, 12)), p.height, 14):
            d.line([(0, y), (p.width, y + 6)], fill=(70, 150, 210), width=3)
    elif p.scene_name == "city":
        for _ in range(6):
            x0 = int(r.integers(0, p.width)); bw = int(r.integers(20, 60)); bh = int(r.integers(p.height // 4, p.height // 2))
            d.rectangle([x0, p.height - bh, x0 + bw, p.height], fill=(70, 70, 80))
    mask = Image.new("L", (p.width, p.height), 0)
    md = ImageDraw.Draw(mask)
    polys = im._polygon(p)
    for k, poly in enumerate(polys):
        md.polygon(poly, fill=0 if (p.object_name == "crescent" and k == 1) else 255)
    if p.object_name == "ring":
        cx, cy = p.cx * p.width, p.cy * p.height
        md.polygon([(cx + 0.55 * (x - cx), cy + 0.55 * (y - cy)) for x, y in polys[0]], fill=0)
    colour = im.COLOURS[p.colour][1]
    fg = Image.new("RGB", img.size, colour)
    if p.texture_name != "plain":
        if p.texture_name == "noise":
            small = (r.random((p.height // 3 + 1, p.width // 3 + 1)) > 0.85).astype(np.uint8) * 255
            pat = Image.fromarray(small, "L").resize((p.width, p.height), Image.NEAREST)
        else:
            yy, xx = np.mgrid[0:p.height, 0:p.width] % 96
            pat = Image.fromarray({"dots": (xx % 12 < 5) & (yy % 12 < 5), "checks": (xx // 12 + yy // 12) % 2 == 0,
                                   "waves": np.sin(xx / 96 * 2 * math.pi * 4 + np.sin(yy / 96 * 2 * math.pi * 2) * 2) > 0.6
                                   }[p.texture_name].astype(np.uint8) * 255, "L")
        fg = Image.composite(Image.new("RGB", img.size, tuple(int(c * 0.7) for c in colour)), fg, pat)
    img = Image.composite(fg, img, mask)
    noise = r.integers(120, 137, size=(p.height // 4 + 1, p.width // 4 + 1), dtype=np.uint8)
    noise = Image.fromarray(noise, "L").resize((p.width, p.height), Image.NEAREST)
    return ImageChops.add(img, Image.merge("RGB", (noise, noise, noise)), scale=1.0, offset=-128)


def test_drawn_images_equal_the_plain_reference_drawing():
    import numpy as np

    from benchmark_builder.synthetic_web import images as im

    seen = set()
    for i in range(400):
        p = im.image_params(11, i, 2014 + i % 9, ("normal", "small", "wide")[i % 3])
        seen.add((p.object_name, p.texture_name, p.scene_name))
        assert np.array_equal(np.asarray(im.draw(p)), np.asarray(_draw_reference(p))), p
    names = {n for n, _, _ in seen}
    assert {"crescent", "ring"} <= names and {t for _, t, _ in seen} == set(im.TEXTURES)


def test_image_choices_are_numpys_weighted_choice():
    import numpy as np

    from benchmark_builder.synthetic_web import images as im

    for year in range(2012, 2025):
        for p, cdf in zip(im._year_probabilities(year), im._year_cdfs(year)):
            for seed in range(60):
                a, b = np.random.default_rng([seed, year]), np.random.default_rng([seed, year])
                assert [im.choose(a, cdf) for _ in range(5)] == [int(b.choice(len(p), p=p)) for _ in range(5)]
