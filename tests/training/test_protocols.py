"""Every TiC protocol end to end on real shards with a real open_clip model: checkpoints per
time step, compute accounting, data plans; DDP with torchrun; kill and resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from training.data import Source, StreamConfig, MixtureStream, time_step_sources, uid_fraction
from training.methods import METHODS, get_method
from training.train import TrainConfig, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(samples_per_step=96, batch_size=16, workers=0, buffer=32, checkpoint_every=2, warmup=2)


def _cfg(data_dir, run_dir, protocol, **kw):
    return TrainConfig(protocol=protocol, data_dir=data_dir, run_dir=str(run_dir), **{**TINY, **kw})


@pytest.mark.parametrize("protocol", sorted(METHODS))
def test_protocol_runs_every_time_step(tiny_benchmark, tmp_path, protocol):
    summary = train(_cfg(tiny_benchmark, tmp_path / protocol, protocol))
    ckpts = sorted(os.listdir(tmp_path / protocol / "checkpoints"))
    steps = {s["step"]: s for s in summary["steps"]}
    T = 3  # {2014-2016}, 2017, 2018
    if protocol == "oracle":
        assert ckpts == ["step_2.pt"]
        assert steps[2]["samples_seen"] == T * TINY["samples_per_step"]
        assert set(steps[2]["data"]) == {"2014-2016", "2017", "2018"}
    else:
        assert ckpts == ["step_0.pt", "step_1.pt", "step_2.pt"]
        assert all(s["samples_seen"] == TINY["samples_per_step"] for s in steps.values())
    assert all(s["macs"] > 0 for s in steps.values())
    ck = torch.load(tmp_path / protocol / "checkpoints" / ckpts[-1], weights_only=True)
    assert ck["final"] and ck["model_name"] == "tic-tiny-32" and ck["step"] == int(ckpts[-1][5])
    from pipelines.models import load_model

    m = load_model(f"tic-tiny-32:{tmp_path / protocol / 'checkpoints' / ckpts[-1]}")  # the shared loader reads it
    assert torch.equal(m.model.state_dict()["logit_scale"], ck["state_dict"]["logit_scale"])


def test_data_plans(tiny_benchmark):
    sources = time_step_sources(tiny_benchmark, "basic")
    assert [s.name for s in sources] == ["2014-2016", "2017", "2018"] and sources[0].size == 3 * 48
    plan = lambda name, t, **o: get_method(name, o).data(t, sources)  # noqa: E731
    assert [s.name for s in plan("sequential", 2)] == ["2018"]
    assert [s.name for s in plan("cumulative-all", 2)] == ["2014-2016", "2017", "2018"]
    eq = plan("cumulative-equal", 2, buffer_factor=2.0)
    assert [round(s.expected_size) for s in eq] == [48, 48, 48]  # buffer 96 = 2 x 48, equal halves
    ex = plan("cumulative-exp", 2, buffer_factor=2.0)
    # shares 1/4 (2014-16) and 1/2 (2017), normalised to 1/3 and 2/3 of 96: 32 and 64, capped at 2017's 48
    assert [round(s.expected_size, 1) for s in ex] == [48, 32.0, 48.0]


def test_replay_subset_really_keeps_the_chosen_fraction(tiny_benchmark):
    src = time_step_sources(tiny_benchmark, "basic")[0].subset(0.25)
    batches = iter(MixtureStream(StreamConfig([src], batch_size=8, buffer=1, image_size=32, transform=_to_tensor)))
    ids = torch.cat([next(batches)[2] for _ in range(40)])
    distinct = set(ids.tolist())
    assert 0.1 * 144 < len(distinct) < 0.45 * 144  # ~36 of 144, and nothing outside the subset


def _to_tensor(img):
    import torchvision.transforms.functional as F

    return F.to_tensor(img.resize((32, 32)))


def test_reader_slots_are_disjoint_and_cover_the_epoch_even_with_fewer_shards_than_slots(tiny_benchmark):
    src = time_step_sources(tiny_benchmark, "basic")[1]  # 2017: 48 samples in 2 shards
    assert len(src.shards) == 2
    seen = []
    for rank in range(3):  # 3 slots > 2 shards
        cfg = StreamConfig([src], batch_size=16, rank=rank, world_size=3, buffer=1, image_size=32, transform=_to_tensor)
        seen.append(set(next(iter(MixtureStream(cfg)))[2].tolist()))
    assert all(len(s) == 16 for s in seen)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert len(seen[0] | seen[1] | seen[2]) == 48


def test_bad_protocol_and_missing_shards_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown protocol"):
        get_method("nope")
    with pytest.raises(FileNotFoundError, match="build the benchmark first"):
        time_step_sources(str(tmp_path), "basic")


def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=env, check=True, capture_output=True, text=True, **kw)


def _cli(data_dir, run_dir, protocol="sequential"):
    return ["--protocol", protocol, "--data-dir", data_dir, "--run-dir", str(run_dir), "--samples-per-step", "160",
            "--batch-size", "16", "--workers", "0", "--checkpoint-every", "2", "--warmup", "2"]


def test_ddp_two_cpu_processes_disjoint_data_identical_weights(tiny_benchmark, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "training", *_cli(tiny_benchmark, run), "--device", "cpu", "--log-ids", "--max-steps", "2",
                    "--shuffle-buffer", "1"], cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=300)
    for t, epoch in ((0, 144), (1, 48)):
        a = torch.load(run / "checkpoints" / f"ids_step{t}_rank0.pt", weights_only=True)
        b = torch.load(run / "checkpoints" / f"ids_step{t}_rank1.pt", weights_only=True)
        assert len(a["ids"]) == len(b["ids"]) == 80  # 160 samples per step, half per rank
        n = min(80, epoch // 2)
        epoch_a, epoch_b = set(a["ids"][:n].tolist()), set(b["ids"][:n].tolist())
        assert len(epoch_a) == len(epoch_b) == n and not epoch_a & epoch_b  # no sample read by both ranks in an epoch
        if epoch == 48:
            assert len(epoch_a | epoch_b) == 48  # and together they read the whole epoch
        for k, v in a["state_dict"].items():
            assert torch.equal(v, b["state_dict"][k]), k


def test_kill_and_resume_gives_the_same_weights(tiny_benchmark, tmp_path):
    clean = tmp_path / "clean"
    _run(_cli(tiny_benchmark, clean, "lwf") + ["--max-steps", "2"])
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training", *_cli(tiny_benchmark, killed, "lwf"), "--max-steps", "2"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = killed / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not ((killed / "checkpoints" / "step_0.pt").exists() and latest.exists()
                                          and torch.load(latest, weights_only=True)["step"] == 1):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step_1.pt").exists(), "run finished before it could be killed"
    _run(_cli(tiny_benchmark, killed, "lwf") + ["--max-steps", "2", "--resume"])
    a = torch.load(clean / "checkpoints" / "step_1.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "checkpoints" / "step_1.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_uid_fraction_is_uniform():
    fr = [uid_fraction(f"{i:032x}") for i in range(2000)]
    assert 0.45 < sum(fr) / len(fr) < 0.55 and min(fr) >= 0 and max(fr) < 1


def test_monthly_and_custom_time_steps(tiny_benchmark, tmp_path):
    from training.data import parse_time_steps, source_epochs

    steps = parse_time_steps("monthly:2017")
    assert [s.name for s in steps] == [f"2017-{m:02d}" for m in range(1, 13)]
    sources = time_step_sources(tiny_benchmark, "basic", steps=steps)
    assert sum(s.size for s in sources) == 48 and all(s.size > 0 for s in sources)  # each sample in one month
    m = int(sources[2].name[-2:])
    stream = source_epochs(sources[2], seed=0, slot=0, n_slots=1)
    assert {next(stream)["meta"]["month"] for _ in range(3 * sources[2].size)} == {m}
    grouped = parse_time_steps("2014-2015,2016")
    assert [(s.name, s.years) for s in grouped] == [("2014-2015", (2014, 2015)), ("2016", (2016,))]
    with pytest.raises(ValueError, match="time-steps"):
        parse_time_steps("monthly:soon")
    summary = train(_cfg(tiny_benchmark, tmp_path / "monthly", "sequential", time_steps="monthly:2017", max_steps=2))
    assert [s["name"] for s in summary["steps"]] == ["2017-01", "2017-02"]
    assert [s["data"] for s in summary["steps"]] == [{src.name: src.size} for src in sources[:2]]
