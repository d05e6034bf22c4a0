"""A data dir in a bucket, end to end, against emulators this suite starts (tests/storage/conftest.py):
build two years of the embedded default into ``gs://`` (fake-gcs-server) and ``s3://`` (moto),
killed with SIGKILL while downloading the second year and resumed; then score with CLIP, reshard,
train one protocol for two time steps reading the bucket's shards, evaluate, and query with
``make sql``. The oracle is the same commands on a local data dir: shard, metadata, pool and
score bytes, the manifests' content hashes, the SQL output and the evaluation are identical."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from benchmark_builder.layout import Layout
from pipelines import io as pio



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
COMPARED = ("candidates", "crawl_status", "pool", "status", "metadata", "variants", "clip")


def _bb(args: list[str]) -> None:
    from benchmark_builder.__main__ import main

    assert main(args) == 0, args


def _pipeline(data_dir: str, run_dir: str, filter_model: str) -> dict:
    """Everything after the build, as a user runs it; returns what the oracle compares."""
    from eval.__main__ import main as eval_main
    from training.__main__ import main as train_main

    _bb(["filter", "--data-dir", data_dir, "--filter-model", filter_model, "--variants", "clip_score", "--clusters", "8"])
    _bb(["reshard", "--name", "y2015", "--data-dir", data_dir, "--where", "year = 2015"])
    assert train_main([*TRAIN, "--data-dir", data_dir, "--run-dir", run_dir]) == 0
    assert eval_main(["run", run_dir, "--data-dir", data_dir]) == 0
    with open(os.path.join(run_dir, "eval", "matrices.json")) as f:
        matrices = json.load(f)
    sql = subprocess.run(["make", "-s", "-o", os.path.join(sys.prefix, ".installed"), "sql", f"VENV={sys.prefix}",
                          f"PY={sys.executable}", f"DATA_DIR={data_dir}", f"Q={SQL}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert sql.returncode == 0, sql.stderr
    return {"matrices": matrices, "sql": sql.stdout}


def _tree(root: str) -> dict[str, str]:
    """relative path -> sha256 of every compared output under a benchmark root, local or remote."""
    out = {}
    for top in COMPARED:
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
    result = _pipeline(data, str(root / "run"), filter_model)
    layout = Layout(data)
    manifests = {y: pio.read_json(layout.year_manifest(y))["content_sha256"] for y in (2014, 2015)}
    return {"data": data, "tree": _tree(layout.root), "manifests": manifests, **result}


@pytest.mark.timeout(900)
def test_bucket_data_dir_matches_a_local_build_with_kill_and_resume(bucket, local, filter_model, tmp_path, monkeypatch,
                                                                    capsys):
    data = f"{bucket}/data"
    layout = Layout(data)
    # the embedded web is an input kept in a local cache: reuse the local build's renders
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shutil.copytree(os.path.join(local["data"], "synthetic-web"), layout.web)

    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "benchmark_builder", *BUILD, "--data-dir", data], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    shard_2015 = pio.join(layout.pool(2015), "shards", "*.tar")
    try:
        while not pio.glob(shard_2015):  # killed while year 2015 downloads: 2014 is finished, 2015 is not
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.time() - t0 < 600, "no 2015 pool shard after 600 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert pio.exists(layout.year_manifest(2014)) and not pio.exists(layout.year_manifest(2015))
    assert not pio.exists(layout.manifest)
    capsys.readouterr()
    _bb([*BUILD, "--data-dir", data])
    out = capsys.readouterr().out
    assert "year 2014: up to date, skipped" in out  # resumed: the finished year is not redone
    assert "=== year 2015" in out

    result = _pipeline(data, str(tmp_path / "run"), filter_model)
    assert "index.duckdb" in {f.rsplit("/", 1)[-1] for f in pio.glob(pio.join(layout.root, "*"))}

    # the oracle: the same commands on a local data dir
    tree = _tree(layout.root)
    assert any(k.startswith("variants/basic/train/2015/") and k.endswith(".tar") for k in tree)
    assert any(k.startswith("variants/y2015/train/2015/") for k in tree) and any(k.startswith("clip/") for k in tree)
    assert tree == local["tree"]  # shard, metadata, status, pool and score bytes
    for y in (2014, 2015):  # hashed by streaming from the store, equal to the local files' hashes
        assert pio.read_json(layout.year_manifest(y))["content_sha256"] == local["manifests"][y]
    meta = pio.read_parquet(pio.join(layout.root, "metadata", "*", "*.parquet")).to_pylist()
    local_meta = pio.read_parquet(pio.join(Layout(local["data"]).root, "metadata", "*", "*.parquet")).to_pylist()
    assert meta == local_meta and len(meta) > 250
    assert result["sql"] == local["sql"] and "2015" in result["sql"]
    assert result["matrices"] == local["matrices"]
    assert not [f for f in pio.glob(pio.join(bucket, "**", "*")) if ".tmp-" in f]  # no partial object
