"""A data dir in a bucket, end to end, against emulators this suite starts (tests/storage/conftest.py):
build two years of the embedded default into ``gs://`` (fake-gcs-server) and ``s3://`` (moto),
killed with SIGKILL while the pool downloads and resumed (finished pool shards reused); then reshard, train one
protocol for two time steps reading the bucket's shards, evaluate, caption (the variants re-written
with the captions), score with CLIP (``filter``), ``report``, ``filter-audit`` and query with
``make sql``. The oracle is the same commands on a local data dir: every build output, reshard and
captioned shard byte-identical, the manifests' content hashes, the metadata rows, the captions, the
evaluation, the report (tables and chart) and the SQL output identical, CLIP scores equal to 1e-5
(and the audit's figures that follow from them to 1e-3)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmark_builder.layout import Layout
from pipelines import io as pio
from tests.conftest import kill_when



def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEB_PORT = free_port()  # baked into the synthetic web's URLs: the same for the local and the bucket build
BUILD = ["build", "tic-datacomp", "--year", "2015", "--pairs-per-year", "160", "--pool-shard-size", "64",
         "--timeout", "3", "--retries", "1", "--web-port", str(WEB_PORT), "--eval-retrieval-size", "20",
         "--eval-classification-size", "15"]
TRAIN = ["--protocol", "sequential", "--time-steps", "2014,2015", "--model", "tic-tiny-32", "--samples-per-step", "64",
         "--batch-size", "16", "--workers", "0", "--warmup", "2", "--shuffle-buffer", "1", "--device", "cpu",
         "--checkpoint-every", "0"]
SQL = "select year, split, count(*) as n, count(distinct shard) as shards from samples group by 1, 2 order by 1, 2"
# outputs whose bytes do not depend on where the data dir lies (the index records its root and
# when it was built; a year's manifest its seconds; markers their run's timings)
COMPARED = ("candidates", "crawl_status", "pool", "status", "metadata", "variants")


def _bb(args: list[str]) -> None:
    from benchmark_builder.__main__ import main

    assert main(args) == 0, args


def _pipeline(data_dir: str, run_dir: str, filter_model: str) -> dict:
    """Everything after the build, as a user runs it; returns what the oracle compares. CLIP scores
    come last and are compared numerically: RunInference batches adaptively, and a different batch
    size changes the last bits of a CPU matmul, so two local runs differ there too."""
    from eval.__main__ import main as eval_main
    from pipelines.transforms.clip_score import load_embeddings
    from training.__main__ import main as train_main

    root = Layout(data_dir).root
    out = {"tree": _tree(root, COMPARED),  # every output of the build
           "manifests": {y: pio.read_json(Layout(data_dir).year_manifest(y))["content_sha256"] for y in (2014, 2015)},
           "metadata": pio.read_parquet(pio.join(root, "metadata", "*", "*.parquet")).to_pylist()}
    _bb(["reshard", "--name", "y2015", "--data-dir", data_dir, "--where", "year = 2015"])
    out["reshard"] = _tree(root, ("variants/y2015",))
    assert train_main([*TRAIN, "--data-dir", data_dir, "--run-dir", run_dir]) == 0
    assert eval_main(["run", run_dir, "--data-dir", data_dir]) == 0
    with open(os.path.join(run_dir, "eval", "matrices.json")) as f:
        out["matrices"] = json.load(f)
    # captions before the CLIP scores: the variants it rewrites then carry no score (equal only to 1e-5)
    _bb(["caption", "--data-dir", data_dir])
    out["captions"] = {r["uid"]: r["caption_generated"] for r in
                       pio.read_parquet(pio.join(root, "metadata", "*", "*.parquet"), ["uid", "caption_generated"]).to_pylist()}
    out["captioned"] = _tree(root, ("variants/basic/train", "variants/y2015/train"))  # re-written with the captions
    out["caption_counts"] = {k: v for k, v in pio.read_json(Layout(data_dir).captions_marker).items() if k != "seconds"}
    _bb(["filter", "--data-dir", data_dir, "--filter-model", filter_model, "--variants", "clip_score", "--clusters", "8"])
    emb = load_embeddings(pio.glob(pio.join(root, "clip", "year=*", "*.npz")))
    out["scores"] = dict(zip(emb["uid"], emb["clip_score"].tolist()))
    out["report"] = _report(data_dir)
    _bb(["filter-audit", "--data-dir", data_dir])
    out["audit"] = pio.read_json(Layout(data_dir).report("filter_audit.json"))
    sql = subprocess.run(["make", "-s", "-o", os.path.join(sys.prefix, ".installed"), "sql", f"VENV={sys.prefix}",
                          f"PY={sys.executable}", f"DATA_DIR={data_dir}", f"Q={SQL}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert sql.returncode == 0, sql.stderr
    out["sql"] = sql.stdout
    return out


def _report(data_dir: str) -> dict:
    """``report``'s tables (from the index) and its chart's bytes."""
    from benchmark_builder.report import report

    out = report(Layout(data_dir))
    return {"stages": out["stages"], "variants": out["variants"], "png": pio.sha256(out["png"])}


def _same_audit(got: list[dict], want: list[dict]) -> None:
    """The filter audit: the pools and what the rule variants keep equal; the mean CLIP scores, and
    the per-year split of what the CLIP variant keeps, follow scores that are equal only to 1e-5
    (see ``_pipeline``): the means to 1e-3, the CLIP variant's total exactly."""
    def key(r):
        return r["variant"], r["year"], r["pool"]

    def rule(rows):
        return [(key(r), r["kept"], r["fraction_kept"]) for r in rows if r["variant"] in ("none", "basic")]

    assert [key(r) for r in got] == [key(r) for r in want] and got
    assert rule(got) == rule(want)
    clip = [(g, w) for g, w in zip(got, want) if g["variant"] == "clip_score"]
    assert clip and sum(g["kept"] for g, _ in clip) == sum(w["kept"] for _, w in clip)
    for g, w in zip(got, want):
        assert (g["mean_clip_score"] is None) == (w["mean_clip_score"] is None)
        assert g["mean_clip_score"] is None or abs(g["mean_clip_score"] - w["mean_clip_score"]) < 1e-3


def _tree(root: str, tops) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root/<top>`` for ``tops``, local or remote."""
    out = {}
    for top in tops:
        for f in pio.glob(pio.join(root, top, "**", "*")):
            if pio.isfile(f):
                out[pio.relpath(f, root)] = pio.sha256(f)
    return out


@pytest.fixture(scope="module")
def filter_model(tmp_path_factory):
    """A randomly initialised tiny CLIP (seeded): the filter model of both builds."""
    import torch

    from pipelines.models import load_model

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("clip") / "random-clip.pt")
    torch.save({"state_dict": load_model("tic-tiny-32").model.state_dict()}, path)
    return f"tic-tiny-32:{path}"


@pytest.fixture(scope="module")
def local(tmp_path_factory, filter_model):
    root = tmp_path_factory.mktemp("local")
    data = str(root / "data")
    _bb([*BUILD, "--data-dir", data])
    return {"data": data, **_pipeline(data, str(root / "run"), filter_model)}


@pytest.mark.timeout(1800)  # a hang bound: 270 s (local reference) + 423 s (gs) at load 25-30 on 2 cores
def test_bucket_data_dir_matches_a_local_build_with_kill_and_resume(bucket, local, filter_model, tmp_path, monkeypatch,
                                                                    capsys):
    data = f"{bucket}/data"
    layout = Layout(data)
    # the embedded web is an input kept in a local cache: reuse the local build's renders
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shutil.copytree(os.path.join(local["data"], "synthetic-web"), layout.web)

    shard_2015 = pio.join(layout.pool(2015), "status", "*.parquet")  # a finished 2015 pool shard
    kill_when([sys.executable, "-m", "benchmark_builder", *BUILD, "--data-dir", data],  # killed while the pool downloads
              lambda: pio.glob(shard_2015), "finished 2015 pool shard", 600, poll=0.2, cwd=REPO,
              env={**os.environ, "PYTHONPATH": REPO})
    assert not pio.exists(layout.manifest) and not pio.exists(layout.year_manifest(2015))  # killed before the end
    # a pool shard is finished once its status file exists (the tar is written first)
    done = {f: pio.stamp(f) for f in pio.glob(pio.join(layout.root, "pool", "*", "shards", "*.tar"))
            if pio.exists(f.replace("/shards/", "/status/").removesuffix(".tar") + ".parquet")}
    assert done
    capsys.readouterr()
    _bb([*BUILD, "--data-dir", data])
    out = capsys.readouterr().out
    assert "crawl: candidates up to date, skipped" in out  # resumed, not started over
    assert {f: pio.stamp(f) for f in done} == done  # pool shards finished before the kill are reused, not rewritten

    got = _pipeline(data, str(tmp_path / "run"), filter_model)
    assert "index.duckdb" in {f.rsplit("/", 1)[-1] for f in pio.glob(pio.join(layout.root, "*"))}

    # the oracle: the same commands on a local data dir
    assert any(k.startswith("variants/basic/train/2015/") and k.endswith(".tar") for k in got["tree"])
    assert got["tree"] == local["tree"]  # candidate, status, pool, metadata, shard and eval-set bytes
    assert got["manifests"] == local["manifests"]  # hashed by streaming from the store
    assert got["metadata"] == local["metadata"] and len(got["metadata"]) > 250
    assert got["reshard"] == local["reshard"] and any(k.endswith(".tar") for k in got["reshard"])
    assert got["matrices"] == local["matrices"]  # trained on the bucket's shards, evaluated on its sets
    assert got["scores"].keys() == local["scores"].keys() and len(got["scores"]) > 250
    assert max(abs(got["scores"][u] - local["scores"][u]) for u in got["scores"]) < 1e-5
    assert got["sql"] == local["sql"] and "2015" in got["sql"]
    assert got["captions"] == local["captions"] and sum(c is not None for c in got["captions"].values()) > 100
    assert got["captioned"] == local["captioned"]
    before = {**got["tree"], **got["reshard"]}  # the captions went into the training shards
    assert [k for k, v in got["captioned"].items() if k.endswith(".tar") and before.get(k) != v]
    assert got["caption_counts"] == local["caption_counts"]
    assert got["report"] == local["report"] and got["report"]["stages"]
    _same_audit(got["audit"], local["audit"])
    assert not [f for f in pio.glob(pio.join(bucket, "**", "*")) if ".tmp" in f]  # no partial object
