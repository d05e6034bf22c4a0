"""``python -m pipelines``: run a single stage on any input.

    python -m pipelines crawl --input 'crawl/*.warc.gz' [--input more.wat.gz] --output DIR [--runner ...] [beam options]

writes ``DIR/year=YYYY/part-00000.parquet`` candidates and ``DIR/crawl_status/year=YYYY/...``.
"""
from __future__ import annotations

import logging
import sys
import time

import apache_beam as beam

from pipelines import io as pio
from pipelines import credentials
from pipelines.cli import Parser, example
from pipelines.options import RunnerConfig, add_runner_arguments, pipeline_options, reject_unknown_flags


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = Parser(prog="python -m pipelines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("crawl", help="WARC/WAT files -> candidate parquet partitioned by crawl year",
                       epilog=example("python -m pipelines crawl --input 'crawl/*.warc.gz' --output /tmp/candidates"))
    c.add_argument("--input", action="append", required=True, help="file or glob (local path or fsspec URL); repeatable")
    c.add_argument("--output", required=True)
    add_runner_arguments(c)
    args, beam_args = parser.parse_known_args(argv)
    reject_unknown_flags(parser, beam_args)
    try:
        credentials.require([*getattr(args, "input", []), getattr(args, "output", "")])
    except credentials.MissingCredentials as e:
        parser.exit(2, f"error: {e}\n")

    if args.command == "crawl":
        from pipelines.transforms import crawl

        files = sorted({f for pattern in args.input for f in pio.glob(pattern)})
        if not files:
            parser.error(f"--input matched no files: {args.input}")
        status_dir = pio.join(args.output, "crawl_status")
        t = time.time()
        with pipeline_options(RunnerConfig(args.runner, beam_args), job_name="tic-crawl") as opts:
            with beam.Pipeline(options=opts) as p:
                crawl.crawl_pipeline(p, files, args.output, status_dir)
        crawl.summarize(args.output, status_dir, time.time() - t)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
