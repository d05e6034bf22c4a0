"""One writer per data dir: an advisory lock file every writing command takes.

``<data_dir>/.writer.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local and NFS v3+
disks) and holds JSON: host, pid, the process's start time (``/proc``), command, start time.
A second writer fails at once with :class:`LockHeld`, whose message names the holder. A lock
whose holder is a dead process of this host (killed, crashed) is taken over with a log line;
a lock of another host is never taken over (its liveness cannot be checked from here).
Take-over and release re-read the file under ``flock`` on the data dir, so two processes
taking over the same stale lock cannot remove each other's fresh one.

Readers (``sql``, training, evaluation) take no lock. Object-store data dirs have no lock
(no exclusive create there); the lock is local-disk only, like the temp-file clean-up.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Iterator

from pipelines import io as pio

log = logging.getLogger(__name__)

LOCK_NAME = ".writer.lock"


class LockHeld(RuntimeError):
    """Another live process writes this data dir."""


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid from the holder)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def lock_path(data_dir: str) -> str:
    return os.path.join(pio.local_path(data_dir), LOCK_NAME)


def read_holder(path: str) -> dict | None:
    """The lock file's JSON, or None when it is absent; ``{}`` when it is not (yet) valid JSON."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def holder_alive(info: dict) -> bool | None:
    """True/False for a holder of this host; None when it cannot be told (another host)."""
    if info.get("host") != socket.gethostname():
        return None
    pid = int(info.get("pid") or 0)
    if not pio.pid_alive(pid):
        return False
    start = info.get("proc_start")
    return start is None or _proc_start(pid) in (None, start)


def describe(info: dict) -> str:
    return (f"{info.get('command') or '?'} (pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"started {info.get('started', '?')})")


@contextlib.contextmanager
def _guard(path: str) -> Iterator[None]:
    """Serialises take-over and release: ``flock`` on the data dir itself (no extra file)."""
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def acquire(data_dir: str, command: str) -> dict | None:
    """Take the data dir's lock for ``command``; returns what was written (None off local disk)."""
    if not pio.is_local(data_dir):
        log.info("%s is not a local path: no writer lock", data_dir)
        return None
    os.makedirs(pio.local_path(data_dir), exist_ok=True)
    path = lock_path(data_dir)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
            "command": command, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    data = (json.dumps(info, sort_keys=True) + "\n").encode()
    for _ in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return info
        holder = read_holder(path)
        if holder is None:  # released meanwhile
            continue
        if not holder:  # created but not yet written by its owner, or damaged
            time.sleep(0.1)
            if read_holder(path) == {}:
                with _guard(path), contextlib.suppress(FileNotFoundError):
                    if read_holder(path) == {} and time.time() - os.path.getmtime(path) > 5:
                        raise LockHeld(f"{data_dir} has an unreadable writer lock {path}; if no command writes this "
                                       "data dir, remove that file")
            continue
        alive = holder_alive(holder)
        if alive is not False:
            hint = "" if alive else f"; if that process is gone, remove {path}"
            raise LockHeld(f"{data_dir} is being written by {describe(holder)}: wait for it to finish{hint}")
        with _guard(path):
            if read_holder(path) == holder:  # still the dead holder's file, not a fresh one
                os.unlink(path)
                log.warning("took over the writer lock of %s in %s: that process no longer runs", describe(holder), data_dir)
    raise LockHeld(f"{data_dir}: could not take the writer lock {path}")


def release(data_dir: str, info: dict | None) -> None:
    if info is None:
        return
    path = lock_path(data_dir)
    with _guard(path):
        if read_holder(path) == info:
            os.unlink(path)


@contextlib.contextmanager
def writer_lock(data_dir: str, command: str | None = None) -> Iterator[dict | None]:
    """``with writer_lock(data_dir, "build ..."):`` the body is the data dir's only writer."""
    info = acquire(data_dir, command or " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]))
    try:
        yield info
    finally:
        release(data_dir, info)
