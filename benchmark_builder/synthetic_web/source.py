"""The embedded synthetic web as a build input (``benchmark_builder/inputs.py`` says what an input
provides): its files (WARC snapshots, or the fixture of a table format), generated under the
layout's web dir and served on 127.0.0.1 while the build reads them; its class list, caption
words and template captioner's attribute table; its renders, for class-incremental streams and
the CLIP filters' reference images; and the DataComp pool fixture of ``build --from datacomp``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Iterator

from benchmark_builder.synthetic_web import fixtures
from benchmark_builder.synthetic_web.attributes import caption_attributes
from benchmark_builder.synthetic_web.concepts import CLASS_NAMES, OBJECTS
from benchmark_builder.synthetic_web.datacomp_pool import FixtureConfig, generate_pool
from benchmark_builder.synthetic_web.generate import WebConfig, generate_web
from benchmark_builder.synthetic_web.images import draw, encode, image_params
from benchmark_builder.synthetic_web.server import SyntheticWebServer
from pipelines import io as pio


class EmbeddedWeb:
    name = "synthetic-web"
    classes = "synthetic-web"  # its class list: the concept names its captions use

    # ------------------------------------------------------------ as a build's input

    @contextlib.contextmanager
    def files(self, cfg, layout) -> Iterator[list[str]]:
        """Generate the web (and the fixture of a table format: a YFCC15M CSV, RedCaps annotation
        files or a URL list of its pages' images) up to ``cfg.year`` and serve its images meanwhile."""
        t = time.time()
        web_years = fixtures.web_years(cfg.benchmark, cfg.fmt)
        web_cfg = WebConfig(seed=cfg.seed, pairs_per_year=cfg.pairs_per_year, port=cfg.web_port,
                            **({"years": web_years} if web_years else {}))
        web = generate_web(layout.web, web_cfg, in_subprocess=True)
        served = [int(y) for y in web["warc_files"] if web_years or int(y) <= cfg.year]
        if cfg.fmt == "warc":
            files = sorted(pio.join(layout.web, f) for y, fs in web["warc_files"].items() if int(y) <= cfg.year for f in fs)
            print(f"synthetic web: {len(files)} WARC files under {layout.web} ({time.time() - t:.1f} s)")
        else:
            files = fixtures.write_fixture(layout.web, cfg.fmt, cfg.benchmark, up_to_year=cfg.year)
            print(f"synthetic web: {cfg.fmt} fixture of {len(files)} file(s) under {layout.web} ({time.time() - t:.1f} s)")
        with SyntheticWebServer(layout.web, subprocess=True, years=served) as server:
            print(f"synthetic web server: {server.base_url}")
            yield files

    def source_root(self, layout) -> str:
        return layout.web

    def fresh(self, cfg, layout, marker: dict) -> bool:
        """Known without generating the web: its files are those of its config up to a year, and a
        crawl up to a later year holds every earlier year's candidates."""
        key = marker.get("synthetic") or []
        return key[:-1] == self._key(cfg)[:-1] and key[-1] >= cfg.year

    def marker(self, cfg) -> dict:
        return {"synthetic": self._key(cfg)}

    @staticmethod
    def _key(cfg) -> list:
        fmt = [] if cfg.fmt == "warc" else [cfg.fmt]  # the WARC key stays as it was: built data dirs stay up to date
        return [cfg.seed, cfg.pairs_per_year, cfg.web_port, *fmt, cfg.year]

    # ------------------------------------------------------------ as a named input

    def class_names(self) -> tuple[str, ...]:
        return tuple(CLASS_NAMES)

    def class_words(self) -> dict[str, tuple[str, ...]]:
        """Words a caption may use for each concept: its name and synonyms."""
        return {o.name: tuple(dict.fromkeys((o.name,) + o.words)) for o in OBJECTS}

    def attribute_table(self, layout, write: bool = True) -> str:
        """The template captioner's attribute table of the web under ``layout`` (object, colour,
        scene, texture of every served image), computed from its generator; with ``write=False``
        (a dry run) only its path."""
        if not write:
            return layout.caption_file("synthetic-web-attributes.parquet")
        web = layout.web
        if not pio.exists(pio.join(web, "catalogue.parquet")):
            raise FileNotFoundError(f"{web}: no synthetic web here; template:{self.name} only captions the embedded "
                                    "default. Pass template:ATTRIBUTES.parquet or a Hugging Face captioner")
        path = layout.caption_file("synthetic-web-attributes.parquet")
        pio.write_parquet(path, caption_attributes(pio.local_path(web)))
        return path

    def task_items(self, per_class_train: int, per_class_test: int, seed: int = 0, size: int = 64):
        """(train, test) lists of (key, class index, domain, load) over its concepts, rendered by its generator."""
        def render(c: int, i: int) -> bytes:
            p = dataclasses.replace(image_params(20_000 + seed, c * 100_003 + i, 2014 + i % 9), obj=c)
            img = draw(p)
            img.thumbnail((size, size))
            return encode(img)

        def items(lo, hi, kind):
            return [(f"{kind}/{c}/{i}", c, self.name, (lambda c=c, i=i: render(c, i)))
                    for c in range(len(CLASS_NAMES)) for i in range(lo, hi)]

        return items(0, per_class_train, "train"), items(per_class_train, per_class_train + per_class_test, "test")

    def reference_images(self, concepts, per_concept: int, seed: int = 0) -> list:
        """Fresh renders (PIL images) of ``concepts``: the CLIP filters' reference set by default."""
        unknown = set(concepts) - set(CLASS_NAMES)
        if unknown:
            raise ValueError(f"unknown reference concepts {sorted(unknown)}; known: {CLASS_NAMES}")
        return [draw(dataclasses.replace(image_params(10_000 + seed, i * 97 + CLASS_NAMES.index(c), 2016),
                                         obj=CLASS_NAMES.index(c))).convert("RGB")
                for c in concepts for i in range(per_concept)]

    def datacomp_pool(self, out: str, seed: int = 0) -> dict:
        """A DataComp pool with TiC-CLIP's uid files under ``out`` (``datacomp_pool.generate_pool``)."""
        return generate_pool(out, FixtureConfig(seed=seed))


EMBEDDED_WEB = EmbeddedWeb()
