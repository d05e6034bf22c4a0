"""Dataflow, checked rather than only built: the dry run's job graphs are opened and every stage,
every path a worker receives, the worker image and the flex template's parameters are asserted on.

Paths are found by unpickling every ParDo's DoFn from the job proto (what Dataflow ships to its
workers) and walking it for strings; encoded Create values are searched as bytes."""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import tempfile
import types

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from benchmark_builder import flex_template
from benchmark_builder.__main__ import _build_parser
from benchmark_builder.build import BuildConfig, build
from pipelines.options import RunnerConfig, unknown_flags

PREFIX = "gs://tic-bucket/bench"
IMAGE = "us-docker.pkg.dev/demo/tic/worker:1"
YEAR_STAGES = ["ReadCandidates", "Timestamp", "Download", "Annotate", "Dedup", "NearDup", "Filter", "Split", "EvalOverlap",
               "Write2014", "Write2015", "WriteMetadata", "WriteStatus", "WriteEval"]
CRAWL_STAGES = ["Crawl"]


def _strings(o, out: set, seen: set, depth: int = 0) -> None:
    if id(o) in seen or depth > 14:
        return
    seen.add(id(o))
    if isinstance(o, str):
        out.add(o)
    elif isinstance(o, (bytes, bytearray)):
        out.update(m.decode() for m in re.findall(rb"(?:gs|s3|file)://[\x21-\x7e]+|/(?:tmp|work|home|root|var|opt|mnt|data)/[\x21-\x7e]*",
                                                  bytes(o)))
    elif isinstance(o, dict):
        for k, v in o.items():
            _strings(k, out, seen, depth + 1)
            _strings(v, out, seen, depth + 1)
    elif isinstance(o, (list, tuple, set, frozenset)):
        for v in o:
            _strings(v, out, seen, depth + 1)
    elif isinstance(o, functools.partial):
        _strings((o.func, o.args, o.keywords), out, seen, depth + 1)
    elif isinstance(o, types.FunctionType):
        for c in o.__closure__ or ():
            try:
                _strings(c.cell_contents, out, seen, depth + 1)
            except ValueError:
                pass
        _strings(o.__defaults__, out, seen, depth + 1)
    elif not isinstance(o, (type, types.ModuleType, int, float, bool, type(None))):
        if dataclasses.is_dataclass(o):
            for f in dataclasses.fields(o):
                _strings(getattr(o, f.name, None), out, seen, depth + 1)
        if hasattr(o, "__dict__"):
            _strings(vars(o), out, seen, depth + 1)


def _graph(job) -> dict:
    proto = job.proto_pipeline
    names = [t.unique_name for t in proto.components.transforms.values()]
    found: set = set()
    for t in proto.components.transforms.values():
        if t.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn.payload
            if payload:
                _strings(pickler.loads(payload), found, set())
        _strings(t.spec.payload, found, set())
    images = [beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image
              for e in proto.components.environments.values()]
    paths = {s for s in found if re.match(r"^(/|\./|gs://|s3://|file:)", s)}
    return {"names": names, "paths": paths, "images": images}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    runs = []
    orig = beam.Pipeline.run

    def run(self, *a, **k):
        result = orig(self, *a, **k)
        runs.append(result)
        return result

    beam.Pipeline.run = run
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # a relative path would show up as this directory
    try:
        cfg = BuildConfig(year=2015, data_dir=PREFIX, inputs=[f"gs://commoncrawl-mirror/CC-MAIN-2015-*/*.warc.gz"],
                          runner=RunnerConfig("DataflowRunner", [
                              "--dry_run=True", "--project=demo", "--region=us-central1",
                              f"--temp_location={PREFIX}/tmp", f"--sdk_container_image={IMAGE}"]))
        assert build(cfg) == {"dry_run": True, "jobs": 2}
    finally:
        beam.Pipeline.run = orig
        os.chdir(cwd)
    unique = list({id(r.job): r.job for r in runs}.values())
    return [_graph(j) for j in unique]


def test_every_stage_is_in_the_job_graphs(jobs):
    assert len(jobs) == 2  # the crawl, then one job for both years (2014, 2015)
    crawl, *years = jobs
    assert any(n.startswith("Crawl") or "Crawl" in n for n in crawl["names"]), crawl["names"][:20]
    for g in years:
        tops = {n.split("/")[0] for n in g["names"]}
        assert [s for s in YEAR_STAGES if s not in tops] == []


def test_every_worker_path_is_under_the_bucket_and_none_is_local(jobs):
    local_roots = {os.getcwd(), tempfile.gettempdir(), os.path.expanduser("~"), "/work", "/tmp"}
    for g in jobs:
        assert g["paths"], "no path found in the job graph: the check would prove nothing"
        outside = sorted(p for p in g["paths"] if not p.startswith(("gs://tic-bucket/bench", "gs://commoncrawl-mirror/")))
        assert outside == [], outside
        assert not [p for p in g["paths"] if any(p.startswith(r) for r in local_roots)]
    year_paths = set().union(*(g["paths"] for g in jobs[1:]))
    for part in ("/tic-datacomp/pool/year=2015", "/tic-datacomp/metadata/year=2015", "/tic-datacomp/variants/basic/train/2015",
                 "/tic-datacomp/variants/basic/eval/retrieval/2015"):
        assert PREFIX + part in year_paths


def test_worker_image_is_the_given_one(jobs):
    """The image carries the project and its lock file (infra/dataflow/Dockerfile), so no
    requirements are staged per job."""
    for g in jobs:
        assert g["images"] and set(g["images"]) == {IMAGE}


def test_flex_template_parameters_are_build_options():
    params = flex_template.template_parameters()
    assert {"year", "data_dir", "input"} <= set(params)
    argv = flex_template.build_argv([f"--{p}=1" if p == "year" else f"--{p}=x" for p in params]
                                    + ["--project=demo", "--region=r", "--temp_location=gs://b/t"], params)
    args, rest = _build_parser().parse_known_args(argv)
    assert args.command == "build" and args.runner == "DataflowRunner"
    assert unknown_flags(rest) == []  # every template parameter is a build flag; the rest are Beam options
    for p in params:
        assert getattr(args, p) not in (None, [], "")
