"""Which jobs a builder command runs, and in what order; the command line only parses.

- ``--filter`` names rule variants (``pipelines.transforms.filter.VARIANTS``: computed while a
  year is built) and CLIP variants (``filtering.CLIP_VARIANTS``: selected afterwards from the
  scored pool). ``none`` and ``basic`` are always computed (the split and the audit read them);
  only the named ones are written as shards, ``basic`` when no rule variant is named.
- A build with CLIP variants runs, in order: the year build, the filter model (``--model``, or
  the trainer's job ``training.filter_model`` for the embedded default), the scoring and
  selection (``filtering.run_filters``), and the audit (``filtering.audit``).

This is the one module of the builder that calls the trainer: the filter model is a training
job, run through its API in this process. Nothing imports this module back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from benchmark_builder.build import BuildConfig, benchmark_spec, build, retry_failed
from benchmark_builder.filtering import CLIP_VARIANTS, ClipFilterConfig, audit, run_filters
from pipelines.safe_inputs import InputError
from pipelines.transforms.filter import VARIANTS

ALWAYS_COMPUTED = ("none", "basic")


@dataclass(frozen=True)
class VariantPlan:
    write: tuple[str, ...]  # rule variants written as shards by the build
    computed: tuple[str, ...]  # rule variants tagged on every sample
    clip: tuple[str, ...]  # CLIP variants selected after the build


def plan_variants(filters: str) -> VariantPlan:
    """``--filter a,b,...`` -> the variants each job handles; InputError names an unknown one."""
    requested = tuple(v.strip() for v in filters.split(",") if v.strip())
    unknown = [v for v in requested if v not in VARIANTS and v not in CLIP_VARIANTS]
    if unknown:
        raise InputError(f"unknown --filter {unknown}; known: {sorted(VARIANTS)} and the CLIP variants {list(CLIP_VARIANTS)}")
    write = tuple(v for v in requested if v not in CLIP_VARIANTS) or ("basic",)
    return VariantPlan(write=write, computed=tuple(dict.fromkeys(ALWAYS_COMPUTED + write)),
                       clip=tuple(v for v in requested if v in CLIP_VARIANTS))


def with_plan(cfg: BuildConfig, plan: VariantPlan) -> BuildConfig:
    return dataclasses.replace(cfg, write_variants=plan.write, variants=plan.computed)


def run_build(cfg: BuildConfig, plan: VariantPlan, model: str = "", retry: bool = False) -> None:
    """The year build (or its ``--retry-failed``), then the CLIP variants of ``plan`` from the built
    pool (download once, filter many times). ValueError (one line) on a bad year range."""
    cfg = with_plan(cfg, plan)
    benchmark_spec(cfg)  # a bad or conflicting year range fails before any work
    (retry_failed if retry else build)(cfg)
    if plan.clip and not cfg.runner.dry_run:
        run_clip_filters(ClipFilterConfig(data_dir=cfg.data_dir, benchmark=cfg.benchmark, filter_model=model,
                                          runner=cfg.runner), plan.clip)


def run_clip_filters(cfg: ClipFilterConfig, variants=CLIP_VARIANTS) -> dict:
    """The filter model (trained here when ``cfg.filter_model`` is empty), the CLIP variants, the audit."""
    from training.filter_model import ensure_filter_model  # torch and the trainer load only for this job

    dry = cfg.runner.dry_run  # the jobs' graphs only: no training, no audit
    model = cfg.filter_model or ensure_filter_model(cfg.data_dir, cfg.benchmark, cfg.seed, cfg.filter_model_samples,
                                                    train_if_absent=not dry)
    info = run_filters(dataclasses.replace(cfg, filter_model=model), tuple(variants))
    if not dry:
        audit(cfg.data_dir, cfg.benchmark)
    return info
