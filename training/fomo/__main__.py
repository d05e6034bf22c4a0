"""``python -m training fomo`` (also ``python -m training.fomo``): run a FoMo-in-Flux recipe on a built benchmark.

    python -m training fomo --method ema-merge --order time --tasks 10
    python -m training fomo --method lora --order reverse-frequency --tasks 5 --option rank=8
    python -m training fomo --budget-only --methods full-ft,lora,ewc,ema-merge --tasks 5   # MAF table only
    python -m training fomo --stream-only --order semantic --tasks 5                      # print the stream

Evaluate with ``python -m eval fomo compare runs/fomo-*``.
"""
from __future__ import annotations

import argparse
import json
import sys

from benchmark_builder.specs import format_years, parse_years
from pipelines.models import load_model
from training.config import add_base_args, base_from_args
from training.fomo.mixture import parse_shares
from training.fomo.runner import FomoConfig, plan_budget, resolve_base, run
from training.fomo.streams import ALL_ORDERS, build_index, make_stream
from training.methods import get_method, methods


def parse(argv=None, prog: str = "python -m training fomo"):
    d = FomoConfig()
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default=d.method, choices=sorted(methods("fomo")))
    p.add_argument("--order", default=d.order, choices=ALL_ORDERS)
    p.add_argument("--tasks", "-T", type=int, default=d.tasks)
    add_base_args(p, d, skip=("samples_per_step",),
                  helps={"model": "model spec of the base; default: the embedded filter CLIP",
                         "run_dir": "default: runs/fomo-<method>-<order>-T<tasks>", "warmup": "warmup iterations of every task",
                         "options": "method option, e.g. rank=8 decay=0.7"})
    p.add_argument("--base-model", dest="model", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--years", default=format_years(d.pool_years), help="FIRST-LAST: the years of the pretraining pool "
                   "(default: %(default)s, the base model's)")
    p.add_argument("--holdout", type=int, default=d.holdout, help="concepts kept out of the stream for retention")
    p.add_argument("--mixture", default=",".join(map(str, d.shares)), help="shares pool,current,replay")
    p.add_argument("--buffer-size", type=int, default=d.buffer_size, help="replay buffer cap in samples (0: all)")
    p.add_argument("--full-ft-steps", type=int, default=d.full_ft_steps,
                   help="compute budget: full fine-tuning iterations per task; other methods get the same MAF")
    p.add_argument("--maf-budget", type=float, default=0.0, help="total budget in GMAF (overrides --full-ft-steps)")
    p.add_argument("--steps-per-task", type=int, default=0, help="fixed iterations per task (skips the MAF budget)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--budget-only", action="store_true", help="print the MAF table of --methods and stop")
    p.add_argument("--methods", default="full-ft,lora,ewc,ema-merge", help="methods of --budget-only")
    p.add_argument("--stream-only", action="store_true", help="print the stream and stop")
    a = p.parse_args(argv)
    try:
        pool_years = parse_years(a.years)
    except ValueError as e:
        p.error(str(e))
    base = base_from_args(p, a)
    try:  # a bad option value (e.g. operator=tie) fails here, with the method's message
        get_method(a.method, base["options"], family="fomo")
    except ValueError as e:
        p.error(str(e))
    cfg = FomoConfig(
        **base, method=a.method, order=a.order, tasks=a.tasks, pool_years=pool_years,
        holdout=a.holdout, shares=parse_shares(a.mixture), buffer_size=a.buffer_size, full_ft_steps=a.full_ft_steps,
        maf_budget=a.maf_budget, steps_per_task=a.steps_per_task,
    )
    return cfg, a


def main(argv=None, prog: str = "python -m training fomo") -> int:
    cfg, a = parse(argv, prog)
    try:
        _run(cfg, a)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # no base model, no benchmark, a run dir of another run
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _run(cfg: FomoConfig, a) -> None:
    if a.budget_only:
        _, table = plan_budget(cfg, resolve_base(cfg), [m for m in a.methods.split(",") if m])
        print(table)
    elif a.stream_only:
        index = build_index(cfg.data_dir, cfg.variant, cfg.benchmark, pool_years=cfg.pool_years)
        stream = make_stream(index, cfg.order, cfg.tasks, cfg.seed, cfg.holdout, load_model(resolve_base(cfg)))
        print(json.dumps(stream.to_json(), indent=1))
    else:
        run(cfg, resume=a.resume)


if __name__ == "__main__":
    sys.exit(main())
