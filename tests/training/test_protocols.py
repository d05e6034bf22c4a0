"""Every TiC protocol end to end on real shards with a real open_clip model: checkpoints per
time step, compute accounting, data plans; DDP with torchrun; kill and resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pipelines.sinks import webdataset as wds
from training.data import MixtureStream, Source, StreamConfig, sample_id, time_step_sources, uid_fraction
from training.methods import get_method, methods
from training.train import TrainConfig, train
from tests.conftest import kill_when

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(samples_per_step=96, batch_size=16, workers=0, buffer=32, checkpoint_every=2, warmup=2)


def _cfg(data_dir, run_dir, protocol, **kw):
    return TrainConfig(protocol=protocol, data_dir=data_dir, run_dir=str(run_dir), **{**TINY, **kw})


@pytest.mark.parametrize("protocol", sorted(methods("tic")))
def test_protocol_runs_every_time_step(tiny_benchmark, tmp_path, protocol):
    options = {"fisher_samples": 16} if protocol == "ewc" else {}  # a Fisher on one batch keeps the test short
    summary = train(_cfg(tiny_benchmark, tmp_path / protocol, protocol, options=options))
    ckpts = sorted(os.listdir(tmp_path / protocol / "checkpoints"))
    steps = {s["step"]: s for s in summary["steps"]}
    T, C = 3, TINY["samples_per_step"]  # {2014-2016}, 2017, 2018
    if protocol == "oracle-final":
        assert ckpts == ["step_2.pt"]
        assert steps[2]["samples_seen"] == T * C
        assert set(steps[2]["data"]) == {"2014-2016", "2017", "2018"}
    else:
        assert ckpts == ["step_0.pt", "step_1.pt", "step_2.pt"]
        per_step = {"oracle": lambda t: (t + 1) * C, "cumulative-all-plus": lambda t: 128}.get(protocol, lambda t: C)
        assert [steps[t]["samples_seen"] for t in range(T)] == [per_step(t) for t in range(T)]  # 1.3 x 96 -> 8 batches of 16
    assert all(s["macs"] > 0 for s in steps.values())
    extra = {t: s["overhead_macs"] for t, s in steps.items()}
    assert all(v > 0 for v in extra.values()) if protocol == "ewc" else not any(extra.values())  # Fisher passes only
    ck = torch.load(tmp_path / protocol / "checkpoints" / ckpts[-1], weights_only=True)
    assert ck["final"] and ck["model_name"] == "tic-tiny-32" and ck["step"] == int(ckpts[-1][5])
    from pipelines.models import load_model

    m = load_model(f"tic-tiny-32:{tmp_path / protocol / 'checkpoints' / ckpts[-1]}")  # the shared loader reads it
    assert torch.equal(m.model.state_dict()["logit_scale"], ck["state_dict"]["logit_scale"])


def test_oracle_retrains_from_scratch_at_every_step_on_all_data_so_far(tiny_benchmark, tmp_path):
    C = TINY["samples_per_step"]
    oracle = train(_cfg(tiny_benchmark, tmp_path / "oracle", "oracle"))
    steps = sorted(oracle["steps"], key=lambda s: s["step"])
    assert [s["samples_seen"] for s in steps] == [C, 2 * C, 3 * C]  # (t + 1) x C
    assert oracle["total_samples_seen"] == 3 * 4 // 2 * C  # T(T + 1)/2 x C
    assert [list(s["data"]) for s in steps] == [["2014-2016"], ["2014-2016", "2017"], ["2014-2016", "2017", "2018"]]
    seq = train(_cfg(tiny_benchmark, tmp_path / "seq", "sequential"))
    assert oracle["total_macs"] == pytest.approx(2.0 * seq["total_macs"], rel=1e-9)  # (T + 1)/2 x Sequential
    # from scratch: its step-1 model is the one a run that never trained step 0 gets
    final_only = train(_cfg(tiny_benchmark, tmp_path / "final", "oracle-final", max_steps=2))
    assert [s["step"] for s in final_only["steps"]] == [1]
    a = torch.load(tmp_path / "oracle" / "checkpoints" / "step_1.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "final" / "checkpoints" / "step_1.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    warm = torch.load(tmp_path / "seq" / "checkpoints" / "step_1.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], warm[k]) for k in a)


def test_data_plans(tiny_benchmark):
    sources = time_step_sources(tiny_benchmark, "basic")
    assert [s.name for s in sources] == ["2014-2016", "2017", "2018"] and sources[0].size == 3 * 48
    plan = lambda name, t, **o: get_method(name, o).data(t, sources)  # noqa: E731
    assert [s.name for s in plan("sequential", 2)] == ["2018"]
    assert [s.name for s in plan("cumulative-all", 2)] == ["2014-2016", "2017", "2018"]
    assert [s.name for s in plan("cumulative-all-plus", 2)] == ["2014-2016", "2017", "2018"]
    eq = plan("cumulative-equal", 2)
    assert [s.name for s in eq] == ["2018", "2014-2016", "2017"]
    assert [round(s.expected_size) for s in eq] == [48, 24, 24]  # buffer D = 48, equal halves
    ex = plan("cumulative-exp", 2)
    # shares 1/4 (2014-16) and 1/2 (2017), normalised to 1/3 and 2/3 of 48
    assert [round(s.expected_size, 1) for s in ex] == [48, 16.0, 32.0]
    eq2 = plan("cumulative-equal", 2, buffer_factor=2.0)  # the option keeps a larger buffer
    assert [round(s.expected_size) for s in eq2] == [48, 48, 48]


@pytest.mark.parametrize("protocol,old_shares", [("cumulative-equal", (1, 1)), ("cumulative-exp", (1, 2))])
def test_replay_steps_train_on_new_data_and_a_buffer_of_equal_size(tiny_benchmark, protocol, old_shares):
    """Count the samples a step draws by source: half new data (2018), half buffer, split as the
    protocol says (TiC-CLIP's buffer of ~D)."""
    sources = time_step_sources(tiny_benchmark, "basic")
    plan = get_method(protocol).data(2, sources)
    stream = iter(MixtureStream(StreamConfig(plan, batch_size=16, seed=7, buffer=8, image_size=32, transform=_to_tensor)))
    counts = torch.zeros(len(plan))
    n_batches = 50
    uids_new, uids_buffer = set(), set()
    for _ in range(n_batches):
        _, _, ids, src = next(stream)
        counts += torch.bincount(src, minlength=len(plan))
        uids_new |= set(ids[src == 0].tolist())
        uids_buffer |= set(ids[src > 0].tolist())
    n = 16 * n_batches  # 800 draws: binomial sd of the new-data count is ~14
    assert abs(counts[0] - n / 2) < 60 and abs(counts[1:].sum() - n / 2) < 60
    want = [n / 2 * s / sum(old_shares) for s in old_shares]
    assert all(abs(c - w) < 60 for c, w in zip(counts[1:].tolist(), want))
    assert len(uids_new) == 48 and not uids_new & uids_buffer  # all of 2018; the buffer is older data only
    # the buffer is the uid-hash subset of the old shards: recompute it from the shards themselves
    subset = set()
    for src in plan[1:]:
        for shard in src.shards:
            for smp in wds.iter_samples(shard, keys=("json",)):
                uid = json.loads(smp["json"])["uid"]
                if uid_fraction(uid) < src.keep_fraction:
                    subset.add(sample_id(uid))
    assert uids_buffer <= subset and len(uids_buffer) >= 0.9 * len(subset)
    assert 0.6 * 48 < len(subset) < 1.4 * 48  # ~D distinct old samples, not all 192


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
    latest = killed / "checkpoints" / "latest.pt"
    kill_when([sys.executable, "-m", "training", *_cli(tiny_benchmark, killed, "lwf"), "--max-steps", "2"],
              lambda: (killed / "checkpoints" / "step_0.pt").exists() and latest.exists()
              and torch.load(latest, weights_only=True)["step"] == 1, "checkpoint inside step 1", 300, poll=0.05,
              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
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
