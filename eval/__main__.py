"""``python -m eval``: evaluate runs and compare them.

    python -m eval run runs/sequential [--data-dir ./data]      # E[i, j], metrics, PNGs, results table
    python -m eval compare runs/sequential runs/cumulative-all runs/oracle [--out runs/compare]
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _evaluate(run_dir, args):
    from benchmark_builder.layout import Layout
    from benchmark_builder.lock import writer_lock
    from eval.dynamic import evaluate_run
    from eval.report import format_run, load_into_duckdb, write_outputs

    res = evaluate_run(run_dir, args.data_dir, args.variant, args.benchmark, args.device, args.batch_size, args.static_tasks,
                       args.years, args.static_root, args.draft_decode)
    out = write_outputs(res, run_dir)
    index = Layout(args.data_dir, args.benchmark).index
    with writer_lock(args.data_dir, f"eval run {run_dir} (loading results into {index})"):  # index.duckdb has one writer
        n = load_into_duckdb(res.rows, index, res.run)
    print(format_run(res))
    print(f"{len(res.rows)} result rows -> {out['dir']}/results.jsonl and the results table of {index} ({n} rows for {res.run})")
    print("pictures: " + ", ".join(out["pngs"]))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "compare"):
        s = sub.add_parser(name)
        s.add_argument("runs", nargs="+")
        s.add_argument("--data-dir", default="./data")
        s.add_argument("--benchmark", default="tic-datacomp")
        s.add_argument("--variant", default="basic")
        s.add_argument("--device", default="cpu")
        s.add_argument("--batch-size", type=int, default=256)
        s.add_argument("--static-tasks", default=None, help="YAML task list (default: eval/static_tasks.yaml)")
        s.add_argument("--years", default="", help="FIRST-LAST: the benchmark's years (default: those the data dir was built for)")
        s.add_argument("--static-root", default=None,
                       help="folder with clip_benchmark's wds_<task> sets (DataComp's 38 tasks in eval/static_tasks.yaml)")
        s.add_argument("--draft-decode", action="store_true",
                       help="decode JPEGs in libjpeg draft mode (faster on large images; default: exact, as clip_benchmark)")
        if name == "compare":
            s.add_argument("--out", default="runs/compare")
    args = p.parse_args(argv)
    try:  # a bad or conflicting year range is a one-line error before any work
        from benchmark_builder.specs import resolve_spec

        resolve_spec(args.benchmark, args.years, data_dir=args.data_dir)
    except (KeyError, ValueError) as e:
        p.error(str(e).strip("'\""))
    from benchmark_builder.lock import LockHeld

    try:
        return _main(args)
    except LockHeld as e:  # the evaluation itself is saved in <run>/eval; re-running reloads it from the cache
        print(f"error: {e}; the results are in each run's eval/results.jsonl, re-running loads them (embeddings are cached)", file=sys.stderr)
        return 2


def _main(args) -> int:
    if args.command == "run":
        for r in args.runs:
            _evaluate(r, args)
        return 0
    from eval.report import compare_heatmaps, compare_table

    summaries, mats = [], []
    for r in args.runs:
        d = os.path.join(r, "eval")
        if not os.path.exists(os.path.join(d, "summary.json")):
            _evaluate(r, args)  # evaluations are cached, so this only fills what is missing
        with open(os.path.join(d, "summary.json")) as f:
            summaries.append({**json.load(f), "benchmark": args.benchmark})
        with open(os.path.join(d, "matrices.json")) as f:
            mats.append((os.path.basename(os.path.normpath(r)), json.load(f)))
    table = compare_table(summaries)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write(table + "\n")
    pngs = [compare_heatmaps(mats, os.path.join(args.out, f"heatmaps_{k}.png"), k) for k in ("retrieval", "classification")]
    from benchmark_builder.specs import resolve_spec

    spec = resolve_spec(args.benchmark, data_dir=args.data_dir)
    print(f"{args.benchmark}: time steps {', '.join(st.name for st in spec.time_steps)} ({args.data_dir})")
    print(table)
    print(f"\n{args.out}/compare.md, " + ", ".join(pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
