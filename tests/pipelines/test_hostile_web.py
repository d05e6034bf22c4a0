"""The download stage against a hostile web on loopback: every candidate ends with its expected
reason, within the deadlines, with bounded memory, and no connection leaves loopback."""
from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from PIL import Image

from pipelines import io as pio
from pipelines.fetch import FetchConfig, Fetcher
from pipelines.transforms.download import DownloadConfig, download_rows, process_shard, shard_budget
from hostile_server import EXPECTED, INVALID_URLS, JPEG, NON_ASCII_REQUESTED, HostileServer, png_rgb

T, RETRIES = 1.0, 1
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# -- a guard: while on, any connection or name lookup that is not loopback/numeric is refused and recorded
_GUARD = {"on": False, "violations": []}


def _audit(event, args):
    if not _GUARD["on"]:
        return
    if event == "socket.connect":
        addr = args[1]
        if isinstance(addr, tuple) and not str(addr[0]).startswith("127."):
            _GUARD["violations"].append(addr)
            raise PermissionError(f"test guard: connect to {addr}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        host = host.decode() if isinstance(host, bytes) else host
        try:
            ipaddress.ip_address(str(host).split("%")[0])
        except ValueError:
            _GUARD["violations"].append(("lookup", host))
            raise PermissionError(f"test guard: name lookup of {host!r}")


sys.addaudithook(_audit)


@pytest.fixture()
def guard():
    _GUARD["on"], _GUARD["violations"] = True, []
    yield _GUARD["violations"]
    _GUARD["on"] = False


NAMES = {"private.hostile.test": "10.0.0.7", "rebind.hostile.test": "127.0.0.1"}


def table_resolver(host, port, family=0, type=0, proto=0, flags=0):
    """getaddrinfo from a table: IP literals as themselves, a few names, no lookup ever leaves the machine."""
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        if host not in NAMES:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        host = NAMES[host]
    return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)


@pytest.fixture()
def web():
    with HostileServer() as server:
        yield server


def _cfg(**kw) -> DownloadConfig:
    fetch = FetchConfig(timeout=T, retries=RETRIES, backoff=0.05, allow_loopback=True, max_per_host=64)
    return DownloadConfig(fetch=fetch, thread_count=64, **kw)


def test_hostile_shard_every_candidate_has_its_reason_within_the_deadline(web, guard, tmp_path):
    cases = {web.base + p: r for p, r in EXPECTED.items()}
    cases.update(INVALID_URLS)
    cases["http://private.hostile.test/x.jpg"] = "blocked_address:private"  # a name resolving to a private address
    cases["http://nx.hostile.test/x.jpg"] = "dns_error"
    cases[f"http://127.0.0.1:{_closed_port()}/x.jpg"] = "connection_error"  # refused
    rows = [{"uid": f"{i:032x}", "url": u, "text": "t", "year": 2024} for i, u in enumerate(cases)]
    cfg = _cfg()
    t0 = time.monotonic()
    out_rows, images = process_shard(str(tmp_path), "00000", rows, cfg, Fetcher(cfg.fetch, getaddrinfo=table_resolver))
    elapsed = time.monotonic() - t0
    print(f"hostile shard: {len(rows)} candidates in {elapsed:.1f} s")
    assert elapsed <= 2 * T * (RETRIES + 1) + 30
    got = {r["url"]: r["reason"] for r in out_rows}
    assert got == cases, {u: (got.get(u), r) for u, r in cases.items() if got.get(u) != r}
    # the shard on disk is complete: the status file has every candidate, the tar every success
    table = pio.read_parquet(os.path.join(str(tmp_path), "status", "00000.parquet"))
    assert sorted(table.column("uid").to_pylist()) == sorted(r["uid"] for r in rows)
    assert set(images) == {r["uid"] for r in out_rows if r["reason"] is None}
    by_url = {r["url"]: r for r in out_rows}
    for path in ("/ok.jpg", "/gzip.jpg", "/non-ascii-redirect", "/redirect-endless", "/429-once.jpg"):
        assert by_url[web.base + path]["sha256"] == hashlib.sha256(JPEG).hexdigest(), path  # the bytes the server meant
    assert web.hits[NON_ASCII_REQUESTED] == 1 and web.hits["/429-once.jpg"] == 2
    assert web.hits["/never"] == 0  # blocked redirects never connected (0.0.0.0 and :: would reach this server)
    assert web.hits["/503.jpg"] == RETRIES + 1 and web.hits["/loop-a"] == 1
    for r in out_rows:
        if r["reason"] is not None and r["reason"].startswith(("http_", "timeout", "connection")):
            assert r["error_message"], r
    assert guard == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(fetcher, url):
    t0 = time.monotonic()
    res = fetcher.fetch(url)
    return res, time.monotonic() - t0


def test_timeout_is_a_total_deadline(web, guard):
    f = Fetcher(FetchConfig(timeout=1.0, retries=0, allow_loopback=True))
    for path in ("/drip.jpg", "/drip-headers.jpg", "/stall.jpg", "/lying-length.jpg"):
        res, secs = _timed(f, web.base + path)
        assert res.reason == "timeout" and 0.9 <= secs < 1.0 + 2, (path, res.reason, secs)  # a drip alone would take minutes
    f2 = Fetcher(FetchConfig(timeout=1.0, retries=2, backoff=0.1, allow_loopback=True))
    res, secs = _timed(f2, web.base + "/stall.jpg")
    assert res.reason == "timeout" and 2.9 <= secs < 3 * 1.0 + 1, secs  # all attempts and backoffs: timeout x (retries + 1)
    assert guard == []


def test_unwanted_bodies_are_not_read(web):
    f = Fetcher(FetchConfig(timeout=10.0, retries=0, allow_loopback=True))
    for path, reason in (("/404-endless.jpg", "http_404"), ("/404-huge.jpg", "http_404"), ("/redirect-endless", None),
                         ("/huge-length.jpg", "too_large")):
        res, secs = _timed(f, web.base + path)
        assert res.reason == reason and secs < 3.0, (path, res.reason, secs)  # reading the body would run into the 10 s
    res = Fetcher(FetchConfig(timeout=5.0, retries=0, allow_loopback=True, max_bytes=1 << 20)).fetch(web.base + "/endless.jpg")
    assert res.reason == "too_large" and res.body is None


def test_retry_after_is_honoured_within_the_deadline(web):
    f = Fetcher(FetchConfig(timeout=2.0, retries=1, backoff=0.01, allow_loopback=True))
    res, secs = _timed(f, web.base + "/429-once.jpg")
    assert res.ok and res.body == JPEG and secs >= 1.0, secs  # waited the server's Retry-After: 1, not the 0.01 s backoff
    res, secs = _timed(f, web.base + "/429-long.jpg")
    assert res.reason == "http_429" and secs < 1.5 and "Retry-After" in res.error_message  # 3600 s does not fit: no wait
    assert web.hits["/429-long.jpg"] == 1


def test_per_host_limit_and_user_agent(web):
    rows = [{"uid": f"{i:032x}", "url": web.base + "/concurrent.jpg", "text": "t"} for i in range(24)]
    cfg = DownloadConfig(fetch=FetchConfig(timeout=5.0, allow_loopback=True, max_per_host=4, user_agent_contact="mailto:ops@example.org"),
                         thread_count=24)
    out = download_rows(rows, cfg)
    assert all(r["reason"] is None for r, _ in out)
    assert web.peak["/concurrent.jpg"] == 4  # never more than 4 at once, and the limit is reached
    from importlib.metadata import version

    assert set(web.user_agents) == {f"tic-benchmarks/{version('tic-benchmarks')} (+mailto:ops@example.org)"}
    assert re.fullmatch(r"tic-benchmarks/\d+\.\d+\.\d+ \(\+mailto:ops@example\.org\)", web.user_agents[0])


def test_watchdog_cuts_a_shard_at_its_budget(web, tmp_path):
    """Per-download deadlines far away (60 s): only the watchdog can end the stalled ones."""
    rows = [{"uid": f"{i:032x}", "url": web.base + p, "text": "t", "year": 2024}
            for i, p in enumerate(["/ok.jpg", "/stall.jpg", "/drip.jpg", "/ok.jpg", "/lying-length.jpg"])]
    cfg = DownloadConfig(fetch=FetchConfig(timeout=60.0, retries=0, allow_loopback=True), thread_count=8, shard_budget=2.0)
    assert shard_budget(5, DownloadConfig()) == 2.0 * 2 + DownloadConfig().shard_slack  # default: timeout x (retries + 1) + slack
    t0 = time.monotonic()
    out, images = process_shard(str(tmp_path), "00000", rows, cfg)
    elapsed = time.monotonic() - t0
    assert 2.0 <= elapsed < 6.0, elapsed
    assert [r["reason"] for r in sorted(out, key=lambda r: r["uid"])] == [None, "shard_deadline", "shard_deadline", None, "shard_deadline"]
    table = pio.read_parquet(os.path.join(str(tmp_path), "status", "00000.parquet"))
    assert table.num_rows == 5 and len(images) == 2
    deadline = time.monotonic() + 5  # the cut downloads' sockets were shut: their threads end soon, not at 60 s
    while time.monotonic() < deadline and [t for t in threading.enumerate() if t.name.startswith("download")]:
        time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name.startswith("download")], "abandoned download threads still blocked"


def test_peak_memory_of_huge_and_bomb_images(web, tmp_path):
    """A 9000x7000 PNG (refused by the pixel limit, and decoded when the limit allows it) and a
    30000x30000 PNG bomb: the download stage's peak RSS (its own process) stays under 1 GiB."""
    web.files["big.png"] = png_rgb(9000, 7000)
    port_base = web.base
    code = textwrap.dedent(f"""
        import json, resource, sys
        from pipelines.fetch import FetchConfig
        from pipelines.resize import ResizeConfig
        from pipelines.transforms.download import DownloadConfig, process_shard
        rows = [{{"uid": "%032x" % i, "url": u, "text": "t", "year": 2024}} for i, u in enumerate(json.loads(sys.argv[1]))]
        fetch = FetchConfig(timeout=30, retries=0, allow_loopback=True, max_bytes=256 << 20)
        out = {{}}
        for name, area in (("default", ResizeConfig().max_image_area), ("decoded", 64e6)):
            cfg = DownloadConfig(fetch=fetch, resize=ResizeConfig(max_image_area=area), thread_count=4)
            res, _ = process_shard(sys.argv[2] + "/" + name, "00000", rows, cfg)
            out[name] = [(r["reason"], r["width"], r["height"]) for r in sorted(res, key=lambda r: r["uid"])]
        # VmHWM: this process image's peak RSS; ru_maxrss also carries the forking parent's peak across exec
        out["vmhwm_mib"] = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
        out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT", json.dumps(out))
    """)
    urls = [port_base + "/bomb.png", f"{port_base}/file/big.png"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code, json.dumps(urls), str(tmp_path)], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads([l for l in res.stdout.splitlines() if l.startswith("RESULT")][-1][len("RESULT "):])
    print(f"download stage peak RSS: {out['vmhwm_mib']:.0f} MiB (VmHWM; ru_maxrss {out['maxrss_mib']:.0f} MiB incl. the parent at fork)")
    assert out["default"] == [["image_too_large", None, None], ["image_too_large", None, None]]
    assert out["decoded"] == [["image_too_large", None, None], [None, 256, 199]]
    assert out["vmhwm_mib"] < 1024


def test_own_time_between_redirect_hops_never_counts(web, guard, monkeypatch):
    """A busy machine between socket calls (here: 1.5 s of our own time after each redirect answer
    and before each later hop's slot, against a 1 s deadline) never turns a prompt redirect
    chain into a timeout, while a stall still ends at the deadline in server time."""
    f = Fetcher(FetchConfig(timeout=1.0, retries=0, allow_loopback=True))
    respond, slot = Fetcher._response, Fetcher._slot

    def slow_response(self, url, resp, key):
        out = respond(self, url, resp, key)
        if isinstance(out, str):  # a redirect read in time, then this thread is starved of CPU
            time.sleep(1.5)
        return out

    def slow_slot(self, host, budget, cancel):
        if budget.attempt_end is not None:  # a later hop: starved before it even asks for its slot
            time.sleep(1.5)
        return slot(self, host, budget, cancel)

    monkeypatch.setattr(Fetcher, "_response", slow_response)
    monkeypatch.setattr(Fetcher, "_slot", slow_slot)
    res, secs = _timed(f, web.base + "/redirect-endless")
    assert res.ok and res.body == JPEG and secs >= 3.0, (res.reason, res.error_message, secs)
    res, secs = _timed(f, web.base + "/stall.jpg")
    assert res.reason == "timeout" and 0.9 <= secs < 2.0, secs
    assert guard == []


def test_a_thread_starved_inside_a_receive_is_not_charged_for_it(web, guard, monkeypatch):
    """The kernel stamps each packet's arrival: a receive counts until its data arrived, not until
    this thread got the CPU back. Here every receive returns 2 s late (as a thread waiting for the
    GIL would) on an answer dripped a byte per 20 ms, against a 1.5 s deadline: each receive alone
    is longer than the deadline, the server's time is about 0.2 s."""
    import socket as socketmod

    body = b"\xff\xd8 tiny\xff\xd9"
    url = web.add_script({"status": 200, "headers": [("Content-Type", "image/jpeg")], "body": body, "mode": "drip"})

    def late(receive):
        def call(self, *a, **kw):
            out = receive(self, *a, **kw)
            if self.getsockname()[1] != web.port:  # the client's receives only, not the server's
                time.sleep(2.0)
            return out
        return call

    for name in ("recv_into", "recvmsg_into"):
        monkeypatch.setattr(socketmod.socket, name, late(getattr(socketmod.socket, name)))
    res, secs = _timed(Fetcher(FetchConfig(timeout=1.5, retries=0, allow_loopback=True)), url)
    assert res.ok and res.body == body and secs > 4.0, (res.reason, res.error_message, secs)  # two receives at least
    monkeypatch.undo()  # a thread that gets the CPU back at once: the drip's own pace decides
    slow = web.add_script({"status": 200, "headers": [("Content-Type", "image/jpeg")], "body": b"x" * 60, "mode": "drip"})
    res, secs = _timed(Fetcher(FetchConfig(timeout=0.5, retries=0, allow_loopback=True)), slow)
    assert res.reason == "timeout", (res.reason, secs)  # 60 bytes at 20 ms: 1.2 s of the server's time
    assert guard == []
