"""``python -m bench [name ...]`` (or ``tic-bench``): run the benchmarks and print their figures.

    download   download+resize+write throughput against img2dataset on the same URL list
    dedup      near-duplicate detection scaling exponent, 100k -> 1M hashes
    train      bundled trainer vs open_clip_train, samples/s on the same shards (needs ./data)
    eval       evaluator embedding speed vs a plain batched torch loop (needs ./data)
    score      RunInference CLIP scoring and captioning vs plain batched torch loops
    sql        uid lookups and year aggregates on a 1M-row index vs raw DuckDB over unsorted Parquet
    build      end-to-end wall time of ``make build-tic-datacomp YEAR=2019`` on a fresh data dir
    scale      one year of the embedded web at 10k, 30k, 100k pairs: wall, rows/s per stage, peak memory, exponent
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_build(argv=None) -> dict:
    data = tempfile.mkdtemp(prefix="bench-build-")
    try:
        t = time.time()
        subprocess.run([sys.executable, "-m", "benchmark_builder", "build", "tic-datacomp", "--year", "2019", "--data-dir", data],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        seconds = time.time() - t
    finally:
        shutil.rmtree(data, ignore_errors=True)
    from bench import report

    report.table(["what", "seconds"], [["build 2014..2019 (6 years of the embedded default), fresh data dir", seconds]])
    result = {"benchmark": "build_2019", "seconds": seconds}
    report.save("build", result)
    return result


def _download(argv=None):
    from bench.download_vs_img2dataset import main

    return main(argv)


def _dedup(argv=None):
    from bench.dedup_scaling import main

    return main(argv)


def _train(argv=None):
    _ensure_data(2016)  # the first time step, 2014-2016, is all it reads
    from bench.train_vs_open_clip import main

    return main(argv)


def _eval(argv=None):
    _ensure_data()
    from bench.eval_speed import main

    return main(argv)


def _score(argv=None):
    from bench.score_speed import main

    return main(argv)


def _sql(argv=None):
    from bench.sql_speed import main

    return main(argv)


def _ensure_data(year: int = 2022):
    """The training and eval benchmarks read the embedded default: build it up to ``year`` once if missing."""
    from benchmark_builder.layout import Layout

    if not os.path.exists(Layout(os.path.join(REPO, "data")).year_manifest(year)):
        subprocess.run([sys.executable, "-m", "benchmark_builder", "build", "tic-datacomp", "--year", str(year),
                        "--data-dir", os.path.join(REPO, "data")], cwd=REPO, check=True)


def _scale(argv=None):
    from bench.scale import main

    return main(argv)


BENCHMARKS = {"download": _download, "dedup": _dedup, "train": _train, "eval": _eval, "score": _score, "sql": _sql,
              "build": bench_build, "scale": _scale}


def main(argv=None) -> int:
    from pipelines.cli import Parser, example

    p = Parser(prog="python -m bench", description=__doc__, epilog=example("python -m bench download dedup"))
    p.add_argument("names", nargs="*", metavar="name", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all); "
                   "options after exactly one name go to that benchmark (python -m bench train --repeat 3)")
    known, options = p.parse_known_args(argv)
    names = known.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    if options and len(known.names) != 1:
        p.error("options go after one benchmark's name: python -m bench NAME [--option ...]")
    results = {}
    for name in names:
        print(f"\n### {name}")
        results[name] = BENCHMARKS[name](options)  # never this command's own argv
    print("\n### summary")
    if "download" in results:
        print(f"download+resize+write vs img2dataset: {results['download']['ratio']:.2f}x")
    if "dedup" in results:
        print(f"near-dup scaling exponent 100k -> 1M: {results['dedup']['exponent']:.3f}, "
              f"{results['dedup']['large']['rows_per_s']:,.0f} rows/s at 1M")
    if "train" in results:
        print(f"training throughput vs open_clip_train: {results['train']['spread']}")
    if "eval" in results:
        print(f"evaluation embedding vs plain torch loop: {results['eval']['ratio']:.2f}x")
    if "score" in results:
        for stage in ("clip_score", "caption"):
            if stage in results["score"]:
                print(f"RunInference {stage} vs plain batched torch loop: {results['score'][stage]['spread']}")
    if "sql" in results:
        q = results["sql"]["queries"]
        print(f"SQL on {results['sql']['rows']:,} rows: uid lookup {q['lookup']['ours']['median_ms']:.1f} ms "
              f"({q['lookup']['speedup']:.1f}x raw DuckDB over unsorted Parquet), year aggregate "
              f"{q['aggregate']['ours']['median_ms']:.1f} ms ({q['aggregate']['speedup']:.1f}x)")
    if "build" in results:
        print(f"make build-tic-datacomp YEAR=2019 (fresh): {results['build']['seconds']:.1f} s")
    if "scale" in results and "exponent_job" in results["scale"]:
        last = results["scale"]["sizes"][-1]
        print(f"build cost exponent {results['scale']['sizes'][0]['pairs']:,} -> {last['pairs']:,} pairs: "
              f"{results['scale']['exponent_job']:.3f}; peak memory at {last['pairs']:,}: {last['peak_pss_bytes'] / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
