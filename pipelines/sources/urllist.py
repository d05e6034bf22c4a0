"""Plain URL lists (img2dataset's inputs) -> candidates, for timestamps that come from elsewhere.

Input: Parquet, CSV or TSV (by extension) with a URL column, a caption column and a time
column (``--url-col``, ``--caption-col``, ``--time-col``; default ``url``, ``caption``, ``time``).
The time is Unix seconds (a number, or a numeric string) or an ISO date / date-time
(``2019-03-04``, ``2019-03-04T10:00:00Z``; without a zone it is UTC); its year places the row. A row
with no readable time is ``missing_time``, one outside the benchmark's years
``outside_years:<year>``, one whose URL is not http(s) or that URL normalisation refuses
``invalid_url:<why>``. Captions: whitespace collapsed, otherwise as given.
"""
from __future__ import annotations

from typing import Iterator

from pipelines.sources.tables import Rows, TableOptions, cell, read_table

NAME = "url-list"


def read_file(path: str, source: str, opts: TableOptions) -> Iterator[tuple[str, dict]]:
    out = Rows(source, opts)
    url_col, cap_col, time_col = opts.url_col or "url", opts.caption_col or "caption", opts.time_col or "time"
    for i, row in enumerate(read_table(path)):
        if i == 0:
            missing = [c for c in (url_col, cap_col, time_col) if c not in row]
            if missing:
                raise ValueError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(row)}); "
                                 "name them with --url-col/--caption-col/--time-col")
        text = " ".join(cell(row, cap_col).split())
        yield out.candidate(i, f"url-list:{i}", cell(row, url_col).strip(), text, row.get(time_col))
    yield out.done()
