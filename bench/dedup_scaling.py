"""Near-duplicate detection cost against input size: 100k and 1M synthetic 256-bit hashes.

1% of the rows are planted near-copies (up to ``threshold`` flipped bits) of earlier rows.
The same functions as the Beam stage run in one process (LSH keys vectorised, one sort,
``resolve_bucket`` on shared buckets); the figure is the scaling exponent
log(t_1M / t_100k) / log(10) (1.0 = linear; target <= 1.15) plus rows/s and the recall of the
planted copies.
"""
from __future__ import annotations

import math
import time

import numpy as np

from bench import report
from pipelines import neardup as nd


def make_items(n: int, cfg: nd.NearDupConfig, seed: int = 0):
    r = np.random.default_rng(seed)
    words = r.integers(0, 2**63, size=(n, 4), dtype=np.uint64) * np.uint64(2) + r.integers(0, 2, size=(n, 4), dtype=np.uint64)
    n_copies = n // 100
    src = r.integers(0, n - n_copies, size=n_copies)
    dst = np.arange(n - n_copies, n)
    words[dst] = words[src]
    flips = r.integers(0, cfg.threshold + 1, size=n_copies)
    for i, k in zip(dst, flips):
        for b in r.choice(256, size=k, replace=False):
            words[i, b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    hashes = [int(w0) | int(w1) << 64 | int(w2) << 128 | int(w3) << 192 for w0, w1, w2, w3 in words.tolist()]
    items = [nd.Item((1, i), f"{i:032x}", h, "current") for i, h in enumerate(hashes)]
    truth = {f"{d:032x}": f"{s:032x}" for s, d in zip(src.tolist(), dst.tolist())}
    return items, truth


def run(n: int, cfg: nd.NearDupConfig) -> dict:
    items, truth = make_items(n, cfg)
    t = time.perf_counter()
    found = nd.near_duplicates_local(items, cfg)
    seconds = time.perf_counter() - t
    hits = sum(1 for u, s in truth.items() if u in found and found[u].uid == s)
    false = sum(1 for u in found if u not in truth)
    return {"rows": n, "seconds": seconds, "rows_per_s": n / seconds, "recall": hits / len(truth), "false_matches": false}


def main(argv=None) -> dict:
    cfg = nd.NearDupConfig()
    small, large = run(100_000, cfg), run(1_000_000, cfg)
    exponent = math.log(large["seconds"] / small["seconds"]) / math.log(large["rows"] / small["rows"])
    report.table(["hashes", "seconds", "rows/s", "recall of planted copies", "false matches"],
                 [[r["rows"], r["seconds"], r["rows_per_s"], f"{r['recall']:.4f}", r["false_matches"]] for r in (small, large)])
    print(f"scaling exponent 100k -> 1M: {exponent:.3f} (target <= 1.15)")
    result = {"benchmark": "dedup_scaling", "small": small, "large": large, "exponent": exponent,
              "config": {"tables": cfg.tables, "bits_per_table": cfg.bits_per_table, "threshold": cfg.threshold}}
    report.save("dedup_scaling", result)
    return result


if __name__ == "__main__":
    main()
