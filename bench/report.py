"""How every benchmark measures against its peer, prints its figures and records them.

- ``paired_marginal``: both sides (ours, then the peer) run on ``n1`` and ``n2`` items, the
  four runs of a repeat alternating sides (ours n1, peer n1, ours n2, peer n2; the next repeat
  starts with the peer), so that a change of machine load hits both. A side's rate is the
  marginal one, (n2 - n1) / (t2 - t1): start-up (interpreter, imports, model load, a Beam
  pipeline's construction) cancels. The figure is the median over repeats of ours / peer.
- ``table``: one aligned table of figures (first column left, the rest right-aligned).
- ``save``: the result as JSON in ``bench/out/<name>.json``.
"""
from __future__ import annotations

import json
import os
import statistics
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "bench", "out")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.3g}"
    return str(v)


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """Print ``rows`` under ``headers`` as an aligned table (numbers formatted by size); return the text."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = ([title] if title else []) + [line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells]
    text = "\n".join(out)
    print(text)
    return text


def save(name: str, result: dict) -> str:
    """Write ``result`` to ``bench/out/<name>.json``; return the path."""
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"-> {os.path.relpath(path, REPO)}")
    return path


def spread(values: list[float | None]) -> str:
    """``median (min-max, n repeats)`` of ratios, for a figure line; ``None`` (a repeat without a
    marginal rate) is left out and counted."""
    ok = [v for v in values if v is not None]
    lost = f", {len(values) - len(ok)} without a marginal rate" if len(ok) < len(values) else ""
    if not ok:
        return f"no figure ({len(values)} repeats, none with a marginal rate: raise n2)"
    return f"{statistics.median(ok):.2f}x ({min(ok):.2f}-{max(ok):.2f}, {len(ok)} repeats{lost})"


def paired_marginal(sides: dict[str, Callable[[int], float]], n1: int, n2: int, repeat: int, warmup: bool = False,
                    log: Callable[[str], None] = print) -> dict:
    """``sides``: {name: run(n) -> seconds}, ours first, the peer second. Returns the seconds of
    every run, each repeat's marginal rates (items/s) and ratio (``None`` where a side's n2 run
was not slower than its n1 run), and their medians over the repeats that have them. ``warmup``:
one uncounted n1 run of each side first."""
    if not 0 < n1 < n2:
        raise ValueError(f"need 0 < n1 < n2, got n1={n1}, n2={n2}")
    names = list(sides)
    ours, peer = names
    runs, ratios = [], []
    if warmup:  # sides that run in this process: the first run pays its imports and lazy set-up
        for who in names:
            log(f"  warm-up: {who} {n1} items in {sides[who](n1):.1f} s (not counted)")
    for r in range(repeat):
        order = names if r % 2 == 0 else names[::-1]
        t = {}
        for n in (n1, n2):
            for who in order:
                t[(who, n)] = sides[who](n)
                log(f"  repeat {r + 1}/{repeat}: {who} {n} items in {t[(who, n)]:.1f} s")
        # a side whose n2 run was not slower than its n1 run (load swung within the repeat) has no rate
        rate = {who: (n2 - n1) / (t[(who, n2)] - t[(who, n1)]) if t[(who, n2)] > t[(who, n1)] else None for who in names}
        ratios.append(rate[ours] / rate[peer] if None not in rate.values() else None)
        runs.append({"per_s": rate, "ratio": ratios[-1], "seconds": {f"{who}-{n}": s for (who, n), s in t.items()}})
    def median(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    return {"n1": n1, "n2": n2, "repeat": repeat, "ratio": median(ratios), "ratios": ratios, "runs": runs,
            "per_s": {who: median(r["per_s"][who] for r in runs) for who in names}, "spread": spread(ratios)}
