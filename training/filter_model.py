"""The filter model of a benchmark without one to download: a small CLIP trained with this
trainer on the earliest time step only (the original filter model, OpenAI's CLIP, was trained on
data older than the benchmark), cached under the layout's ``filter-model/<key>/`` where ``key``
hashes its training configuration (``benchmark_builder.filtering.filter_model_key``), and reused.
``python -m training filter-model`` runs it; the Makefile runs it between the build and the CLIP
filters when no ``FILTER_MODEL`` is given (the builder finds the cached model through the layout and
never calls the trainer). FoMo starts from the same checkpoint (``training.fomo.runner.resolve_base``).
"""
from __future__ import annotations

from benchmark_builder.filtering import DEFAULT_FILTER_MODEL as MODEL
from benchmark_builder.filtering import ClipFilterConfig, filter_model_key
from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines.cli import Parser, add_data_args, example, exit_status
from training.train import TrainConfig, train


def filter_model_config(data_dir: str, benchmark: str, seed: int, samples: int) -> tuple[TrainConfig, str]:
    """(training config, cache key) for ``samples`` of the earliest time step (the builder's
    default budget is ``ClipFilterConfig.filter_model_samples``)."""
    _, key = filter_model_key(data_dir, benchmark, seed, samples)
    cfg = TrainConfig(protocol="sequential", max_steps=1, samples_per_step=samples, model=MODEL, seed=seed,
                      data_dir=data_dir, benchmark=benchmark, run_dir=Layout(data_dir, benchmark).filter_model(key))
    return cfg, key


def ensure_filter_model(data_dir: str, benchmark: str, seed: int, samples: int) -> str:
    """The model spec of the cached filter model; trains it first (resuming a killed run) if absent."""
    cfg, key = filter_model_config(data_dir, benchmark, seed, samples)
    ckpt = Layout(data_dir, benchmark).filter_model_checkpoint(key)
    if pio.exists(ckpt):
        print(f"filter model: cached {ckpt}")
    else:
        print(f"filter model: training {MODEL} on the earliest time step only -> {cfg.run_dir}")
        train(cfg, resume=True)
    return f"{MODEL}:{ckpt}"


def main(argv=None, prog: str = "python -m training filter-model") -> int:
    d = ClipFilterConfig()
    p = Parser(prog=prog, description="Train (or reuse) the default filter model of a built benchmark and print "
               "its model spec, which `python -m benchmark_builder filter` then uses when no --model is given.",
               epilog=example(f"{prog} --data-dir ./data && python -m benchmark_builder filter --data-dir ./data"))
    add_data_args(p)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--samples", type=int, default=d.filter_model_samples, help="training samples of the earliest time step")
    a = p.parse_args(argv)

    def run() -> int:
        print(ensure_filter_model(a.data_dir, a.benchmark, a.seed, a.samples))
        return 0

    return exit_status(run, ValueError, FileNotFoundError)
