"""Dataflow, checked rather than only built: the dry runs' job graphs (build, caption, filter) are
opened and every stage, every path a worker receives, the worker image, the job's options and the
flex template's parameters are asserted on.

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
    return {"names": names, "paths": _paths(found), "images": images, "job_name": job.proto.name,
            "options": job.options.get_all_options(drop_default=True)}


def _paths(strings: set) -> set:
    """The strings that are paths, also inside a model spec (``NAME:/path``, ``NAME:gs://...``)."""
    out = set()
    for s in strings:
        spec = re.match(r"^[\w.-]+:(?=/|\./|gs://|s3://|file:)", s) if not re.match(r"^(gs|s3|file):", s) else None
        s = s[spec.end():] if spec else s
        if re.match(r"^(/|\./|gs://|s3://|file:)", s):
            out.add(s)
    return out


def _dry_run(job, cwd) -> list[dict]:
    """The job graphs that ``job()`` submits, each opened (run in ``cwd``, an empty directory: a
    relative path would show up as that directory)."""
    runs = []
    orig = beam.Pipeline.run

    def run(self, *a, **k):
        result = orig(self, *a, **k)
        runs.append(result)
        return result

    beam.Pipeline.run = run
    cwd = os.getcwd()
    os.chdir(cwd)
    try:
        out = job()
    finally:
        beam.Pipeline.run = orig
        os.chdir(cwd)
    unique = list({id(r.job): r.job for r in runs}.values())
    assert out == {"dry_run": True, "jobs": len(unique)}
    return [_graph(j) for j in unique]


def _dataflow(*extra: str) -> RunnerConfig:
    return RunnerConfig("DataflowRunner", ["--dry_run=True", "--project=demo", "--region=us-central1",
                                           f"--temp_location={PREFIX}/tmp", f"--sdk_container_image={IMAGE}", *extra])


def _stages(g: dict) -> set[str]:
    """Top-level and second-level transform names: ``Caption``, ``Caption/Samples``, ..."""
    return {"/".join(n.split("/")[:2]) for n in g["names"]} | {n.split("/")[0] for n in g["names"]}


def _local(paths) -> list[str]:
    """Paths on the submitting machine's disk: absolute, relative or ``file:``."""
    return sorted(p for p in paths if p.startswith(("/", "./", "file:")))


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    cfg = BuildConfig(year=2015, data_dir=PREFIX, inputs=[f"gs://commoncrawl-mirror/CC-MAIN-2015-*/*.warc.gz"],
                      runner=_dataflow())
    return _dry_run(lambda: build(cfg), tmp_path_factory.mktemp("cwd"))


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


ROOT = f"{PREFIX}/tic-datacomp"
CAPTION_STAGES = ["Caption/MetadataFiles", "Caption/Samples", "Caption/Caption", "Caption/GroupShard", "Caption/Write",
                  "Caption/PerYear", "Collect"]
SCORE_STAGES = ["Score/MetadataFiles", "Score/Samples", "Score/CLIP", "Score/GroupShard", "Score/Write", "Score/Total"]


def _common_checks(g: dict, job_name: str) -> None:
    """What every job of this project shows Dataflow: its name, the given image, project, region
    and temp location, staging under the bucket, and no local path in any worker's code."""
    assert g["job_name"] == job_name
    assert set(g["images"]) == {IMAGE}
    o = g["options"]
    assert (o["project"], o["region"], o["sdk_container_image"]) == ("demo", "us-central1", IMAGE)
    assert o["temp_location"].startswith(f"{PREFIX}/tmp") and o["staging_location"].startswith(f"{PREFIX}/tmp")
    assert not o.get("requirements_file") and not o.get("setup_file")  # the image carries the project and its lock
    assert g["paths"], "no path found in the job graph: the check would prove nothing"
    assert [p for p in g["paths"] if not p.startswith(PREFIX + "/")] == []
    assert _local(g["paths"]) == []


def test_caption_job_graph(tmp_path):
    from benchmark_builder.captioning import CaptionConfig, run_captions

    [g] = _dry_run(lambda: run_captions(CaptionConfig(data_dir=PREFIX, years=(2014, 2015), runner=_dataflow())), tmp_path)
    _common_checks(g, "tic-caption")
    assert [s for s in CAPTION_STAGES if s not in _stages(g)] == []
    for y in (2014, 2015):  # the inputs: each year's metadata and pool; the output: the metadata, the counts
        assert f"{ROOT}/metadata/year={y}/*.parquet" in g["paths"]
        assert f"{ROOT}/pool/year={y}" in g["paths"]
    assert f"{ROOT}/captions/synthetic-web-attributes.parquet" in g["paths"]  # the template captioner's table
    assert f"{ROOT}/captions/_counts" in g["paths"]
    assert not [p for p in g["paths"] if "year=2016" in p]  # only the years asked for


def test_filter_job_graphs(tmp_path):
    from benchmark_builder.filtering import ClipFilterConfig
    from benchmark_builder.jobs import run_clip_filters

    cfg = ClipFilterConfig(data_dir=PREFIX, years=(2014, 2015), runner=_dataflow())
    score, *reshards = _dry_run(lambda: run_clip_filters(cfg), tmp_path)
    _common_checks(score, "tic-clip-score")
    assert [s for s in SCORE_STAGES if s not in _stages(score)] == []
    for y in (2014, 2015):
        assert f"{ROOT}/metadata/year={y}/*.parquet" in score["paths"] and f"{ROOT}/pool/year={y}" in score["paths"]
    assert f"{ROOT}/clip" in score["paths"]  # embeddings out
    # the default filter model: the trainer's checkpoint in the data dir (a dry run does not train it)
    assert [p for p in score["paths"] if p.startswith(f"{ROOT}/filter-model/") and p.endswith(".pt")]
    # one reshard job per CLIP variant, each writing every year's training shards under the bucket
    assert [g["job_name"] for g in reshards] == ["tic-reshard-clip-score", "tic-reshard-image-based", "tic-reshard-bestpool"]
    for g, v in zip(reshards, ("clip_score", "image_based", "bestpool")):
        _common_checks(g, g["job_name"])
        assert [s for y in (2014, 2015) for s in (f"Files{y}", f"Rows{y}", f"Write{y}") if s not in _stages(g)] == []
        for y in (2014, 2015):
            assert f"{ROOT}/variants/{v}/train/{y}" in g["paths"] and f"{ROOT}/pool/year={y}" in g["paths"]


def test_a_local_model_in_a_filter_job_is_caught(tmp_path):
    """The oracle of the checks above: a filter model on this machine's disk reaches the workers
    inside the model spec, and the path scan finds it."""
    from benchmark_builder.filtering import ClipFilterConfig, run_filters

    model = str(tmp_path / "filter.pt")
    cfg = ClipFilterConfig(data_dir=PREFIX, years=(2014,), filter_model=f"tic-tiny-32:{model}", runner=_dataflow())
    score, _ = _dry_run(lambda: run_filters(cfg, ("clip_score",)), tmp_path)
    assert _local(score["paths"]) == [model]
