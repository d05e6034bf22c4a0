"""Which jobs a builder command runs, and in what order; the command line only parses.

- ``--filter`` names rule variants (``pipelines.transforms.filter.VARIANTS``: computed while a
  year is built) and CLIP variants (``filtering.CLIP_VARIANTS``: selected afterwards from the
  scored pool). ``none`` and ``basic`` are always computed (the split and the audit read them);
  only the named ones are written as shards, ``basic`` when no rule variant is named.
- A build with CLIP variants runs, in order: the year build, the scoring and selection
  (``filtering.run_filters``) with the filter model (``--model``, or the cached default that
  ``python -m training filter-model`` trained), and the audit (``filtering.audit``).

The builder never trains: the default filter model is a training job, and the sequence build ->
filter model -> CLIP filters is the Makefile's (``make filter``, ``make build-tic-datacomp
FILTER=bestpool``), so no builder module imports the trainer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from benchmark_builder.build import BuildConfig, benchmark_spec, build, retry_failed
from benchmark_builder.filtering import CLIP_VARIANTS, ClipFilterConfig, audit, default_filter_model, run_filters
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
    pool (download once, filter many times). ValueError (one line) on a bad year range; InputError
    before any work when CLIP variants have no filter model (no ``model``, no cached default)."""
    cfg = with_plan(cfg, plan)
    benchmark_spec(cfg)  # a bad or conflicting year range fails before any work
    clip = ClipFilterConfig(data_dir=cfg.data_dir, benchmark=cfg.benchmark, filter_model=model, runner=cfg.runner)
    if plan.clip and not cfg.runner.dry_run and not model:
        clip.filter_model = default_filter_model(clip)
    (retry_failed if retry else build)(cfg)
    if plan.clip and not cfg.runner.dry_run:
        run_clip_filters(clip, plan.clip)


def run_clip_filters(cfg: ClipFilterConfig, variants=CLIP_VARIANTS) -> dict:
    """The CLIP variants with ``cfg.filter_model`` (empty: the cached default), then the audit."""
    model = cfg.filter_model or default_filter_model(cfg)
    info = run_filters(dataclasses.replace(cfg, filter_model=model), tuple(variants))
    audit(cfg.data_dir, cfg.benchmark)
    return info
