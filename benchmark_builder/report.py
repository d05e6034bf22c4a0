"""``make benchmark-report``: per-year counts for each stage, variant and split, and a bar chart.

Everything comes from the index (status rows, metadata, shard sizes), so the report describes
what is on disk, not what a build believed it wrote.
"""
from __future__ import annotations

import os

from benchmark_builder.index import build_index, format_table, query
from benchmark_builder.layout import Layout
from pipelines import io as pio

STAGE_SQL = """
select c.year,
       count(*) as candidates,
       count(*) filter (where s.stage <> 'timestamp' or s.status = 'kept') as first_seen_here,
       count(m.uid) as downloaded,
       count(m.uid) filter (where m.dedup_reason is null) as after_dedup,
       count(m.uid) filter (where m.dedup_reason like 'near_duplicate_of:%') as near_duplicates,
       count(m.uid) filter (where m.dedup_reason like 'eval_overlap:%') as eval_overlap,
       count(m.uid) filter (where m.split = 'train' and m.dedup_reason is null) as train_pool,
       count(m.uid) filter (where m.split = 'eval_retrieval' and m.dedup_reason is null) as eval_retrieval,
       count(m.uid) filter (where m.split = 'eval_classification' and m.dedup_reason is null) as eval_classification
from candidates c join status s on s.uid = c.uid and s.year = c.year
left join metadata m on m.uid = c.uid and m.year = c.year
group by 1 order by 1
"""

VARIANT_SQL = """
select variant, split, year, sum(count) as samples from shards where year is not null
group by 1, 2, 3 order by 1, 2, 3
"""


def report(layout: Layout, png: str | None = None) -> dict:
    build_index(layout)
    cols, rows = query(layout, STAGE_SQL)
    print("samples per year and stage")
    print(format_table(cols, rows))
    vcols, vrows = query(layout, VARIANT_SQL)
    print("\nsamples per variant, split and year (from the shards on disk)")
    print(format_table(vcols, vrows))
    png = png or layout.report("samples_per_year.png")
    _bar_chart([r for r in vrows if r[1] == "train"], png)
    print(f"\nchart: {os.path.abspath(pio.local_path(png))}")
    return {"stages": [dict(zip(cols, r)) for r in rows], "variants": [dict(zip(vcols, r)) for r in vrows], "png": png}


def _bar_chart(rows, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({r[0] for r in rows})
    years = sorted({r[2] for r in rows})
    counts = {(r[0], r[2]): r[3] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, len(years) * 0.9), 4))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        ax.bar([y + (i - (len(variants) - 1) / 2) * width for y in years], [counts.get((v, y), 0) for y in years],
               width=width, label=v)
    ax.set_xlabel("first-seen year")
    ax.set_ylabel("training samples")
    ax.set_title("samples per year per filter variant")
    ax.set_xticks(years)
    if variants:  # every year empty: an empty chart, no legend
        ax.legend()
    fig.tight_layout()
    pio.makedirs(os.path.dirname(pio.local_path(png)))
    tmp = pio.local_path(png) + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, pio.local_path(png))
