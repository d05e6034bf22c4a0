"""``python -m eval {tic,cil,fomo} run|compare RUN_DIR...``: evaluate runs of one continual family
and compare them. Evaluation never trains: train with ``python -m training {tic,cil,fomo}`` first.

    python -m eval tic run runs/sequential [--data-dir ./data]     # E[i, j], metrics, PNGs, results table
    python -m eval tic compare runs/sequential runs/cumulative-all runs/oracle [--out runs/compare]
    python -m eval cil run runs/cil-synthetic-web-gdro-m200          # the accuracy matrix R[t, j]
    python -m eval cil compare runs/cil-* --plot runs/cl-memory.png
    python -m eval fomo compare runs/fomo-lora-time-T5 runs/fomo-full-ft-time-T5 --out runs/fomo-compare

``compare`` evaluates the runs that have no evaluation yet. Without a family, ``python -m eval
run|compare`` is ``tic``. Every family takes ``--device auto`` (cuda when available).
"""
from __future__ import annotations

import argparse
import os
import sys

from pipelines.cli import add_data_args, add_device


def _evaluate(run_dir, args):
    from benchmark_builder.index import editable
    from benchmark_builder.layout import Layout
    from benchmark_builder.lock import writer_lock
    from eval.dynamic import evaluate_run
    from eval.report import format_run, load_into_duckdb, write_outputs

    res = evaluate_run(run_dir, args.data_dir, args.variant, args.benchmark, args.device, args.batch_size, args.static_tasks,
                       args.years, args.static_root, args.draft_decode)
    out = write_outputs(res, run_dir)
    index = Layout(args.data_dir, args.benchmark).index
    with writer_lock(args.data_dir, f"eval run {run_dir} (loading results into {index})"):  # index.duckdb has one writer
        with editable(Layout(args.data_dir, args.benchmark)) as local:
            n = load_into_duckdb(res.rows, local, res.run)
    print(format_run(res))
    print(f"{len(res.rows)} result rows -> {out['dir']}/results.jsonl and the results table of {index} ({n} rows for {res.run})")
    print("pictures: " + ", ".join(out["pngs"]))
    return res


FAMILIES = ("tic", "cil", "fomo")


def _add_tic_args(s: argparse.ArgumentParser, name: str) -> None:
    """The flags of ``python -m eval tic run|compare``."""
    s.add_argument("runs", nargs="+", metavar="RUN_DIR", help="runs of python -m training tic")
    add_data_args(s)
    s.add_argument("--variant", default="basic")
    add_device(s)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--static-tasks", default=None, help="YAML task list (default: eval/static_tasks.yaml)")
    s.add_argument("--years", default="", help="FIRST-LAST: the benchmark's years (default: those the data dir was built for)")
    s.add_argument("--static-root", default=None,
                   help="folder with clip_benchmark's wds_<task> sets (DataComp's 38 tasks in eval/static_tasks.yaml)")
    s.add_argument("--draft-decode", action="store_true",
                   help="decode JPEGs in libjpeg draft mode (faster on large images; default: exact, as clip_benchmark)")
    if name == "compare":
        s.add_argument("--out", default="runs/compare")

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    named = bool(argv) and argv[0] in FAMILIES
    family = argv.pop(0) if named else "tic"  # no family: the TiC evaluation, as before the families
    p = argparse.ArgumentParser(prog="python -m eval" + (f" {family}" if named else ""), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    if family == "cil":
        from eval import incremental

        for name in ("run", "compare"):
            incremental.add_args(sub.add_parser(name))
        args = p.parse_args(argv)
        return incremental.run_command(args.command, args)
    if family == "fomo":
        from eval import fomo

        for name in ("run", "compare"):
            fomo.add_args(sub.add_parser(name), name)
        args = p.parse_args(argv)
        return fomo.run_command(args.command, args)
    for name in ("run", "compare"):
        _add_tic_args(sub.add_parser(name), name)
    args = p.parse_args(argv)
    from pipelines import credentials

    try:  # a data dir or run dir in a bucket without credentials: one line, in seconds
        credentials.require([args.data_dir, *args.runs])
    except credentials.MissingCredentials as e:
        p.exit(2, f"error: {e}\n")
    try:  # a bad or conflicting year range is a one-line error before any work
        from benchmark_builder.specs import resolve_spec

        resolve_spec(args.benchmark, args.years, data_dir=args.data_dir)
    except (KeyError, ValueError) as e:
        p.error(str(e).strip("'\""))
    from benchmark_builder.lock import LockHeld
    from pipelines.provenance import resolve_device

    args.device = resolve_device(args.device)
    try:
        return _main(args)
    except LockHeld as e:  # the evaluation itself is saved in <run>/eval; re-running reloads it from the cache
        print(f"error: {e}; the results are in each run's eval/results.jsonl, re-running loads them (embeddings are cached)", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # not a training run, no checkpoints, no eval sets: one line
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    if args.command == "run":
        for r in args.runs:
            _evaluate(r, args)
        return 0
    from eval.report import compare_heatmaps, compare_table, eval_dir
    from pipelines import io as pio
    from training.checkpoint import run_name

    summaries, mats = [], []
    for r in args.runs:  # local run dirs or bucket prefixes
        d = eval_dir(r)
        if not pio.exists(pio.join(d, "summary.json")):
            _evaluate(r, args)  # evaluations are cached, so this only fills what is missing
        summaries.append({**pio.read_json(pio.join(d, "summary.json")), "benchmark": args.benchmark})
        mats.append((run_name(r), pio.read_json(pio.join(d, "matrices.json"))))
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
