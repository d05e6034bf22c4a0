"""Multi-node training on one machine: two ``torchrun`` agents (``--nnodes 2``, c10d rendezvous
on loopback, one process each) train one run: disjoint samples per rank, identical weights;
killing one node and relaunching both with ``--resume`` ends on the uninterrupted run's
weights; a run dir that the nodes do not share is refused."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

# samples per time step: 20 iterations of 2 x 16, so that a node killed at step 1's first mid-step
# checkpoint (iteration 2) dies with 18 iterations to go however fast the trainer is
SAMPLES = 640
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    for port in range(25000 + os.getpid() % 500, 26000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 25000-25999")


def _agents(data_dir, run_dirs, *extra, port=None):
    """Two torchrun agents, node ranks 0 and 1, each with one worker; ``run_dirs``: one per node."""
    port = port or _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node, run_dir in enumerate(run_dirs):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nproc-per-node", "1",
               "-m", "training", "--protocol", "sequential", "--data-dir", data_dir, "--run-dir", str(run_dir),
               "--samples-per-step", str(SAMPLES), "--batch-size", "16", "--workers", "0", "--checkpoint-every", "2",
               "--warmup", "2", "--max-steps", "2", "--shuffle-buffer", "1", "--device", "cpu", *extra]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    return procs


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant, from /proc (torchrun starts its workers in sessions of their
    own, so killing the agent's process group leaves the worker training)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _kill_node(proc) -> None:
    """SIGKILL a node: its agent and the worker processes the agent started."""
    for pid in _tree(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait(procs, timeout=300):
    out = []
    for p in procs:
        try:
            out.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out.append(p.communicate()[0])
    return [p.returncode for p in procs], out


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_two_nodes_disjoint_samples_identical_weights_and_resume_after_a_node_is_killed(tiny_benchmark, tmp_path):
    t0 = time.time()
    clean = tmp_path / "clean"
    codes, out = _wait(_agents(tiny_benchmark, [clean, clean], "--log-ids"))
    assert codes == [0, 0], out[0][-3000:] + out[1][-3000:]
    for t, epoch in ((0, 144), (1, 48)):
        a = torch.load(clean / "checkpoints" / f"ids_step{t}_rank0.pt", weights_only=True)
        b = torch.load(clean / "checkpoints" / f"ids_step{t}_rank1.pt", weights_only=True)
        assert len(a["ids"]) == len(b["ids"]) == SAMPLES // 2  # half of a step's samples per node
        n = min(SAMPLES // 2, epoch // 2)
        assert not set(a["ids"][:n].tolist()) & set(b["ids"][:n].tolist())  # no sample read by both nodes in an epoch
        for k, v in a["state_dict"].items():
            assert torch.equal(v, b["state_dict"][k]), k
    t_clean = time.time() - t0

    killed = tmp_path / "killed"
    procs = _agents(tiny_benchmark, [killed, killed])
    latest = killed / "checkpoints" / "latest.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not ((killed / "checkpoints" / "step_0.pt").exists() and latest.exists()
                                          and torch.load(latest, weights_only=True)["step"] == 1):
        time.sleep(0.01)
    _kill_node(procs[1])  # node 1 goes away mid-step
    codes, out = _wait(procs, timeout=120)  # node 0 notices its peer is gone and stops
    assert codes[0] != 0 and not (killed / "checkpoints" / "step_1.pt").exists(), "run finished before it could be killed"

    codes, out = _wait(_agents(tiny_benchmark, [killed, killed], "--resume"))
    assert codes == [0, 0], out[0][-3000:] + out[1][-3000:]
    a, b = _weights(clean / "checkpoints" / "step_1.pt"), _weights(killed / "checkpoints" / "step_1.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    print(f"2-node run {t_clean:.0f} s; kill + resume {time.time() - t0 - t_clean:.0f} s")


@pytest.mark.slow
def test_a_run_dir_the_nodes_do_not_share_is_refused(tiny_benchmark, tmp_path):
    codes, out = _wait(_agents(tiny_benchmark, [tmp_path / "node0", tmp_path / "node1"]))
    assert codes[0] != 0 and codes[1] != 0
    for o in out:
        assert "is not shared between nodes" in o and "cannot see rank 0's files" in o
    assert not any((tmp_path / d / "config.json").exists() for d in ("node0", "node1"))  # refused before any write
