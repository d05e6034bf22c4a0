"""``python -m training`` (or ``torchrun --nproc_per_node N -m training``): run one continual
protocol over the time steps of a built benchmark.

    python -m training --protocol cumulative-all --data-dir ./data --run-dir runs/cumulative-all
    torchrun --nproc_per_node 2 -m training --protocol sequential --run-dir runs/seq --device cpu
    python -m training --protocol sequential --run-dir runs/seq --resume     # continue a killed run
"""
from __future__ import annotations

import argparse
import json
import sys

from training.methods import METHODS
from training.train import TrainConfig, train


def parse(argv=None) -> tuple[TrainConfig, bool]:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", default=d.protocol, choices=sorted(METHODS))
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--benchmark", default=d.benchmark)
    p.add_argument("--variant", default=d.variant)
    p.add_argument("--run-dir", default=None, help="default: runs/<protocol>")
    p.add_argument("--model", default=d.model, help="model spec (see pipelines.models): preset, NAME:TAG, NAME:/path.pt")
    p.add_argument("--samples-per-step", type=int, default=d.samples_per_step, help="compute budget per time step")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per rank")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--wd", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=int, default=d.warmup, help="warmup iterations of the first time step")
    p.add_argument("--warmup-later", type=int, default=d.warmup_later, help="warmup iterations of later steps")
    p.add_argument("--schedule", default=d.schedule, choices=["cosine", "constant", "rsqrt"])
    p.add_argument("--meta-schedule", default=d.meta_schedule, choices=["constant", "cosine-recovery", "rsqrt-recovery"])
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--precision", default=d.precision, choices=["auto", "amp", "fp32"])
    p.add_argument("--text", default=d.text, choices=["alt", "generated", "both"])
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--shuffle-buffer", type=int, default=d.buffer, help="samples per source in the shuffle buffer")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--max-steps", type=int, default=0, help="train only the first N time steps")
    p.add_argument("--time-steps", default="", help="'' (the data dir's), monthly:2019, or year groups 2014-2016,2017")
    p.add_argument("--years", default="", help="FIRST-LAST: the benchmark's years (default: those the data dir was built for)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. buffer_factor=2 alpha=0.5 weight=1000 temperature=2")
    p.add_argument("--log-ids", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    a = p.parse_args(argv)
    options = {}
    for kv in a.option:
        k, sep, v = kv.partition("=")
        if not sep:
            p.error(f"--option must be KEY=VALUE, got {kv!r}")
        try:
            options[k] = json.loads(v)
        except json.JSONDecodeError:
            options[k] = v
    try:  # a bad or conflicting year range is a one-line error before any work
        from benchmark_builder.specs import resolve_spec

        resolve_spec(a.benchmark, a.years, a.time_steps, a.data_dir)
    except (KeyError, ValueError) as e:
        p.error(str(e).strip("'\""))
    cfg = TrainConfig(
        protocol=a.protocol, data_dir=a.data_dir, benchmark=a.benchmark, variant=a.variant,
        run_dir=a.run_dir or f"runs/{a.protocol}", model=a.model, samples_per_step=a.samples_per_step,
        batch_size=a.batch_size, lr=a.lr, weight_decay=a.wd, warmup=a.warmup, warmup_later=a.warmup_later,
        schedule=a.schedule, meta_schedule=a.meta_schedule, grad_clip=a.grad_clip, precision=a.precision, text=a.text,
        workers=a.workers, buffer=a.shuffle_buffer, seed=a.seed, device=a.device, checkpoint_every=a.checkpoint_every, max_steps=a.max_steps, time_steps=a.time_steps,
        years=a.years,
        options=options, log_ids=a.log_ids,
    )
    return cfg, a.resume


def main(argv=None) -> int:
    cfg, resume = parse(argv)
    train(cfg, resume=resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
