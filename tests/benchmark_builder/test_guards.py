"""One writer per data dir (a lock file naming its holder, taken over from dead processes),
temp clean-up that never touches a live writer's files, a relocatable index and reshard
refusing names that would leave variants/ or replace the build's own shards."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

from benchmark_builder.lock import LOCK_NAME, LockHeld, writer_lock
from pipelines import io as pio
from tests.conftest import tree_sha256

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "-m", "benchmark_builder", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(data_dir, **info):
    os.makedirs(data_dir, exist_ok=True)
    info = {"host": socket.gethostname(), "pid": _dead_pid(), "command": "benchmark_builder build tic-datacomp",
            "started": "2026-01-01T00:00:00+00:00", **info}
    with open(os.path.join(data_dir, LOCK_NAME), "w") as f:
        json.dump(info, f)
    return info


HOLD = textwrap.dedent("""
    import sys, time
    from benchmark_builder.lock import LockHeld, writer_lock
    try:
        with writer_lock(sys.argv[1], "holder " + sys.argv[2]):
            print("got", flush=True)
            time.sleep(float(sys.argv[3]))
    except LockHeld as e:
        print("refused", e, flush=True)
""")


# ---------------------------------------------------------------- temp files

def test_stale_temp_clean_up_removes_only_dead_owners_temps(tmp_path):
    d = tmp_path / "root" / "metadata" / "year=2014"
    d.mkdir(parents=True)
    final = str(d / "00000.parquet")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, not reaped: a zombie is dead too
    while zombie.poll() is None and open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.05)
    mine = pio.temp_path(final)
    dead = mine.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    zomb = mine.replace(f"-{os.getpid()}-", f"-{zombie.pid}-")
    other_host = mine.replace(f"-{pio.HOST_TAG}-", "-0badc0de-")
    legacy = str(d / ".tmp-00000.parquet-1a2b3c4d")
    dead_wal = dead + ".wal"
    for p in (mine, dead, zomb, other_host, legacy, dead_wal, final):
        open(p, "w").close()
    assert pio.remove_stale_temps(str(tmp_path / "root")) == 3
    left = sorted(os.listdir(d))
    assert left == sorted(os.path.basename(p) for p in (mine, other_host, legacy, final))
    zombie.wait()


def test_live_writers_temp_survives_another_runs_clean_up(tmp_path):
    """A second process's clean-up (a resumed build) leaves a temp that a live writer is filling."""
    target = str(tmp_path / "root" / "x.bin")
    go = tmp_path / "go"
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        from pipelines import io as pio
        with pio.atomic_open({target!r}) as f:
            f.write(b"a" * 1000)
            f.flush()
            print("writing", flush=True)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.05)
            f.write(b"b")
        """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    temps = [f for f in os.listdir(tmp_path / "root") if f.startswith(".tmp-")]
    assert len(temps) == 1 and f"-{writer.pid}-" in temps[0]
    assert pio.remove_stale_temps(str(tmp_path / "root")) == 0
    go.touch()
    assert writer.wait(60) == 0
    assert open(target, "rb").read() == b"a" * 1000 + b"b"
    assert os.listdir(tmp_path / "root") == ["x.bin"]


# ---------------------------------------------------------------- the lock

def test_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    data = str(tmp_path / "data")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, data, "one", "30"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "got"
        info = json.load(open(os.path.join(data, LOCK_NAME)))
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname() and info["command"] == "holder one"
        with pytest.raises(LockHeld) as e:
            with writer_lock(data, "second"):
                pass
        msg = str(e.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in msg and "holder one" in msg
        assert f"started {info['started']}" in msg
    finally:
        holder.kill()
        holder.wait()
    with writer_lock(data, "after") as mine:  # the holder died: taken over
        assert json.load(open(os.path.join(data, LOCK_NAME))) == mine
    assert not os.path.exists(os.path.join(data, LOCK_NAME))  # released on exit


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_log_line(tmp_path, caplog):
    data = str(tmp_path / "data")
    stale = _write_lock(data)
    with caplog.at_level("WARNING", logger="benchmark_builder.lock"):
        with writer_lock(data, "mine") as info:
            assert info["pid"] == os.getpid()
    assert f"took over the writer lock of benchmark_builder build tic-datacomp (pid {stale['pid']}" in caplog.text
    # a reused pid (alive, but another process than the one that wrote the lock) is not the holder either
    _write_lock(data, pid=os.getppid(), proc_start="1")
    with writer_lock(data, "mine"):
        pass


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    data = str(tmp_path / "data")
    _write_lock(data, host="elsewhere.example", pid=1)
    with pytest.raises(LockHeld, match=r"pid 1 on host elsewhere\.example.*if that process is gone, remove .*\.writer\.lock"):
        with writer_lock(data, "mine"):
            pass


def test_unreadable_lock_is_refused_not_guessed(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / LOCK_NAME).write_bytes(b"")  # a writer died between creating and filling it, long ago
    os.utime(data / LOCK_NAME, (time.time() - 60, time.time() - 60))
    with pytest.raises(LockHeld, match=r"unreadable writer lock .*\.writer\.lock; if no command writes this data dir"):
        with writer_lock(str(data), "mine"):
            pass
    assert (data / LOCK_NAME).read_bytes() == b""


def test_racing_take_overs_of_one_stale_lock_leave_one_writer(tmp_path):
    data = str(tmp_path / "data")
    _write_lock(data)
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, data, str(i), "3"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for i in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    got = [o for o in outs if o.startswith("got")]
    assert len(got) == 1, outs
    assert all(o.startswith("refused") for o in outs if not o.startswith("got")), outs


# ---------------------------------------------------------------- a real build

SMALL = ["--pairs-per-year", "160", "--pool-shard-size", "64", "--timeout", "3", "--retries", "1",
         "--eval-retrieval-size", "20", "--eval-classification-size", "15"]


@pytest.fixture(scope="module")
def contested(tmp_path_factory):
    """A real build (``--filter none``) into a data dir whose path holds a quote, a space and a
    bracket; while it runs, a second build and an ``index`` are started against the same dir."""
    data = str(tmp_path_factory.mktemp("guards") / "it's [data]")
    first = subprocess.Popen([sys.executable, "-m", "benchmark_builder", "build", "tic-datacomp", "--year", "2014",
                              "--data-dir", data, "--filter", "none", "--web-port", str(_free_port()), *SMALL],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = os.path.join(data, LOCK_NAME)
    deadline = time.time() + 120
    while not os.path.exists(lock) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    holder = json.load(open(lock))
    t0 = time.time()
    second = _cli("build", "tic-datacomp", "--year", "2014", "--data-dir", data, "--web-port", str(_free_port()), *SMALL,
                  timeout=60)
    second_s = time.time() - t0
    index = _cli("index", "--data-dir", data, timeout=60)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    return {"data": data, "holder": holder, "first_pid": first.pid, "second": second, "second_s": second_s,
            "index": index, "first_err": err}


def test_second_concurrent_build_fails_at_once_naming_the_holder(contested):
    second, holder = contested["second"], contested["holder"]
    print(f"second build refused after {contested['second_s']:.1f} s")
    assert second.returncode == 2 and contested["second_s"] < 15
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
    assert holder["pid"] == contested["first_pid"] and holder["command"].startswith("benchmark_builder build tic-datacomp")
    for part in (f"pid {contested['first_pid']}", f"host {socket.gethostname()}", f"started {holder['started']}",
                 "build tic-datacomp --year 2014", "--filter none"):
        assert part in lines[0], (part, lines[0])
    assert contested["index"].returncode == 2 and f"pid {contested['first_pid']}" in contested["index"].stderr
    assert not os.path.exists(os.path.join(contested["data"], LOCK_NAME))  # the first released it


def test_reshard_refuses_names_outside_variants_and_the_builds_own_variant(contested):
    root = os.path.join(contested["data"], "tic-datacomp")
    before = tree_sha256(root)
    assert os.listdir(os.path.join(root, "variants")) == ["none"]
    for name, why in (("..", "bad variant name '..'"), (".", "bad variant name '.'"), ("../../x", "bad variant name"),
                      ("none", "variant 'none' was written by the build")):
        r = _cli("reshard", "--name", name, "--data-dir", contested["data"], "--where", "year = 2014")
        assert r.returncode == 2 and r.stderr.startswith("error: ") and why in r.stderr, (name, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert tree_sha256(root) == before  # nothing written, nothing removed
    assert not os.path.exists(os.path.join(root, "train")) and not os.path.exists(os.path.join(contested["data"], "train"))


def test_index_is_relocatable(contested, tmp_path):
    moved = str(tmp_path / "moved 'again'")
    shutil.move(contested["data"], moved)  # the old location is gone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stale = _cli("sql", "--data-dir", moved, "select count(*) from shards", cwd=str(elsewhere))
    assert stale.returncode == 2 and "run python -m benchmark_builder index --data-dir" in stale.stderr, stale.stderr
    _write_lock(moved)  # a killed writer's lock travelled with the copy: taken over
    r = _cli("index", "--data-dir", moved, cwd=str(elsewhere))
    assert r.returncode == 0, r.stderr
    assert "took over the writer lock" in r.stderr
    q = _cli("sql", "--json", "--data-dir", moved,
             "select variant, split, year, path, count from shards order by path", cwd=str(elsewhere))
    assert q.returncode == 0, q.stderr
    rows = [json.loads(line) for line in q.stdout.splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(r["variant"] == "none" and r["year"] == 2014 for r in train)
    root = os.path.join(moved, "tic-datacomp")
    on_disk = sorted(os.path.join(root, "variants", "none", "train", "2014", f)
                     for f in os.listdir(os.path.join(root, "variants", "none", "train", "2014")) if f.endswith(".tar"))
    assert [r["path"] for r in train] == on_disk
    for r in train:  # the path opens from this other cwd and holds the recorded count
        os.chdir(str(elsewhere))
        try:
            with tarfile.open(r["path"]) as t:
                keys = {m.name.rsplit(".", 1)[0] for m in t.getmembers() if m.isfile()}
        finally:
            os.chdir(REPO)
        assert len(keys) == r["count"] > 0
    # the views read the moved Parquet files: same rows as reading them directly
    import pyarrow.parquet as pq

    direct = sum(pq.read_metadata(os.path.join(d, f)).num_rows for d, _, fs in os.walk(os.path.join(root, "metadata"))
                 for f in fs if f.endswith(".parquet"))
    m = _cli("sql", "--json", "--data-dir", moved, "select count(*) as n from metadata", cwd=str(elsewhere))
    assert json.loads(m.stdout)["n"] == direct > 0
