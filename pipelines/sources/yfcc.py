"""TiC-YFCC's source: YFCC15M's metadata CSV -> candidates (the recipe of TiC-CLIP's
``dataset_creation/tic-yfcc15m/create_splits.py``, as it was meant to run).

Input: YFCC15M's CSV with the columns ``key`` (the photo's hash), ``dateuploaded`` (Unix
seconds), ``title``, ``description``, ``usertags`` and the image's download URL (``downloadurl``,
else ``url``; ``--url-col`` names another). One candidate per row:

- time: ``dateuploaded`` read as UTC (the reference reads it in the machine's local zone); its
  year places the row in TiC-YFCC's time steps {2004-2008}, {2009-2010}, {2011-2012},
  {2013-2014}; a row of another year is ``outside_years:<year>``, never a candidate;
- caption: ``title. description. usertags`` (an empty cell reads as ""), URL-unquoted
  (``unquote_plus``: ``+`` is a space), fixed with ftfy, HTML tags removed, cut to 500 characters;
- image: ``key[:3]/key[3:6]/key.jpg`` under ``--image-root`` when given, else the download URL.
"""
from __future__ import annotations

import re
from typing import Iterator
from urllib.parse import unquote_plus

from pipelines.sources.tables import Rows, TableOptions, cell, read_table

NAME = "yfcc"
MAX_CAPTION = 500
_TAG = re.compile(r"<.*?>")
URL_COLUMNS = ("downloadurl", "url")


def caption(title: str, description: str, usertags: str) -> str:
    """The recipe's caption of one YFCC row."""
    import ftfy

    text = unquote_plus(f"{title or ''}. {description or ''}. {usertags or ''}")
    return _TAG.sub("", ftfy.fix_text(text))[:MAX_CAPTION]


def image_path(key: str) -> str:
    """Where YFCC15M's image folders keep the image of ``key``."""
    return f"{key[:3]}/{key[3:6]}/{key}.jpg"


def read_file(path: str, source: str, opts: TableOptions) -> Iterator[tuple[str, dict]]:
    out = Rows(source, opts)
    url_col = opts.url_col
    for i, row in enumerate(read_table(path)):
        if i == 0:
            missing = [c for c in ("key", "dateuploaded", "title", "description", "usertags") if c not in row]
            if not url_col:
                url_col = next((c for c in URL_COLUMNS if c in row), "")
            if not opts.image_root and (not url_col or url_col not in row):
                missing.append(opts.url_col or "downloadurl")
            if missing:
                raise ValueError(f"{path}: not a YFCC15M CSV: no column {', '.join(missing)}")
        key = cell(row, "key").strip()
        text = caption(cell(row, "title"), cell(row, "description"), cell(row, "usertags"))
        yield out.candidate(i, f"yfcc15m:{key}", cell(row, url_col).strip() if url_col else None, text,
                            cell(row, "dateuploaded").strip() or None, image_path(key) if key else None)
    yield out.done()
