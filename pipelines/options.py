"""Runner options, in one place.

``--runner`` picks the engine; every other Beam flag passes through untouched. Local runs use
Beam's ``FnApiRunner`` (what DirectRunner falls back to, without DirectRunner's attempt to
download the Prism binary first); ``--direct_running_mode=multi_processing`` and
``--direct_num_workers`` work as usual. The portable path starts Beam's Python local job
service itself when no ``--job_endpoint`` is given. Dataflow, Spark and Flink get their
options from the command line or ``infra/`` (see ``infra/README.md``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # imported where used: a CLI that only parses arguments (or fails on a lock) starts fast
    from apache_beam.options.pipeline_options import PipelineOptions

log = logging.getLogger(__name__)

RUNNERS = ("DirectRunner", "PortableRunner", "DataflowRunner", "SparkRunner", "FlinkRunner", "PrismRunner")
_LOCAL = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@dataclass
class RunnerConfig:
    runner: str = "DirectRunner"
    beam_args: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.runner not in RUNNERS:
            raise ValueError(f"--runner must be one of {', '.join(RUNNERS)}; got {self.runner!r}")

    def _has(self, flag: str) -> bool:
        return any(a == flag or a.startswith(flag + "=") for a in self.beam_args)

    @property
    def dry_run(self) -> bool:
        """Dataflow's ``--dry_run=True``: build and validate the job, run nothing."""
        return any(a in ("--dry_run", "--dry_run=True", "--dry_run=true") for a in self.beam_args)

    @property
    def external_without_config(self) -> bool:
        """``--environment_type=EXTERNAL`` with no ``--environment_config``: start a local worker pool."""
        return any(a in ("--environment_type=EXTERNAL",) for a in self.beam_args) and not self._has("--environment_config")

    @property
    def picks_local_workers(self) -> bool:
        """Beam's local runner with no worker flags of the user's: the job's size decides (``local_workers``)."""
        return self.runner == "DirectRunner" and not self._has("--direct_running_mode") and not self._has("--direct_num_workers")

    @property
    def is_local(self) -> bool:
        return self.runner in ("DirectRunner", "PortableRunner")

    def validate(self) -> None:
        """Fail before any work with a message naming the missing option."""
        need = {
            "DataflowRunner": ["--project", "--region", "--temp_location"],
            "SparkRunner": [],
            "FlinkRunner": [],
        }.get(self.runner, [])
        missing = [f for f in need if not self._has(f)]
        if missing and not self._has("--dry_run"):
            raise ValueError(f"{self.runner} needs {', '.join(missing)} (see infra/README.md)")


def _beam_parser():
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    parser = _BeamArgumentParser(allow_abbrev=False)
    for c in sorted(set(subclasses(PipelineOptions)), key=lambda c: c.__qualname__):
        c._add_argparse_args(parser)
    return parser


def unknown_flags(args: list[str], own_flags=()) -> list[str]:
    """The flags in ``args`` that no Beam pipeline option defines, each with a close match from
    ``own_flags`` (the command's flags) or Beam's when there is one: a typo such as
    ``--thread-cout 5`` must be an error, not a build with the default."""
    import difflib

    if not [a for a in args if a.startswith("-")]:
        return []  # nothing to check: Beam is not even imported
    parser = _beam_parser()
    _, rest = parser.parse_known_args(list(args))
    known = [*own_flags, *(o for a in parser._actions for o in a.option_strings)]
    out = []
    for a in rest:
        if not a.startswith("-"):
            continue
        flag = a.split("=", 1)[0]
        near = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
        out.append(f"{flag} (did you mean {near[0]}?)" if near else flag)
    return out


def reject_unknown_flags(parser, beam_args: list[str]) -> None:
    """``parser.error`` (exit 2) naming every flag that neither ``parser`` nor Beam understands."""
    own = [o for a in parser._actions for o in a.option_strings]
    for action in parser._actions:  # subcommands' flags count as the command's own
        for sub in (getattr(action, "choices", None) or {}).values() if isinstance(getattr(action, "choices", None), dict) else ():
            own += [o for a in sub._actions for o in a.option_strings]
    bad = unknown_flags(beam_args, own)
    if bad:
        parser.error(f"unrecognized arguments: {', '.join(bad)} (neither an option of this command nor a Beam pipeline option)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_job_service() -> Iterator[str]:
    """Start ``apache_beam.runners.portability.local_job_service_main`` and yield its endpoint."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(proc, port, "Beam local job service")
        yield f"localhost:{port}"
    finally:
        _stop(proc)


def _wait_for_port(proc: subprocess.Popen, port: int, what: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start-up (exit code {proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not open port {port} in {seconds:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def local_worker_pool() -> Iterator[str]:
    """Beam's SDK worker pool (``apache_beam.runners.worker.worker_pool_main``) as a separate
    process on loopback, the sidecar a Flink or Spark worker runs: the job service hands it work
    through ``--environment_type=EXTERNAL --environment_config=<its address>`` and it starts SDK
    harness processes with the ``python`` found on PATH, so this interpreter's directory goes
    first on the pool's PATH."""
    port = _free_port()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        _wait_for_port(proc, port, "Beam worker pool")
        yield f"localhost:{port}"
    finally:
        # the pool's SDK harness children are in its session: end them with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        _stop(proc)


# A local job of at least this many rows runs in worker processes, one per core (at most
# LOCAL_MAX_WORKERS), unless --direct_running_mode or --direct_num_workers says otherwise: Beam's
# in-process runner executes every stage but the download's thread pool on one core (measured on
# the embedded default, 24,000 candidates on 2 cores: the job took 112.9-129.5 s in process,
# 92.5 s in 2 worker processes, same output bytes); below it, starting the workers costs more
# than it saves.
LOCAL_PROCESSES_MIN_ROWS = 5000
LOCAL_MAX_WORKERS = 4


def local_workers(cfg: RunnerConfig, rows: int | None) -> int:
    """Worker processes the local runner gets for a job of ``rows`` rows (1: in this process)."""
    if not cfg.picks_local_workers or rows is None or rows < LOCAL_PROCESSES_MIN_ROWS:
        return 1
    return max(1, min(LOCAL_MAX_WORKERS, os.cpu_count() or 1))


@contextlib.contextmanager
def pipeline_options(cfg: RunnerConfig, job_name: str | None = None, rows: int | None = None) -> Iterator[PipelineOptions]:
    """PipelineOptions for ``cfg``, with whatever local service the runner needs kept alive.
    ``rows``: the job's size, when known, for the local runner's choice of worker processes."""
    from apache_beam.options.pipeline_options import PipelineOptions

    cfg.validate()
    args = list(cfg.beam_args)
    workers = local_workers(cfg, rows)
    if workers > 1:
        print(f"local runner: {workers} worker processes for {rows} rows (--direct_num_workers=1 runs in this process)",
              flush=True)
        args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    if job_name and cfg.runner == "DataflowRunner" and not cfg._has("--job_name"):
        # Dataflow's job names are [-a-z0-9], a letter first (a variant name may hold '_' or '.')
        args.append(f"--job_name={re.sub(r'[^a-z0-9-]+', '-', job_name.lower()).strip('-')}")
    if cfg.runner == "DirectRunner":
        yield PipelineOptions([f"--runner={_LOCAL}", *args])
    elif cfg.runner == "PortableRunner" and not cfg._has("--job_endpoint"):
        with contextlib.ExitStack() as stack:
            env = [] if cfg._has("--environment_type") else ["--environment_type=LOOPBACK"]
            if cfg.external_without_config:  # the cluster topology on this machine: a worker pool of its own
                env = [f"--environment_config={stack.enter_context(local_worker_pool())}"]
            endpoint = stack.enter_context(local_job_service())
            yield PipelineOptions(["--runner=PortableRunner", f"--job_endpoint={endpoint}", *env, *args])
    else:
        yield PipelineOptions([f"--runner={cfg.runner}", *args])


def add_runner_arguments(parser) -> None:
    parser.add_argument(
        "--runner",
        default=os.environ.get("BEAM_RUNNER", "DirectRunner"),
        choices=RUNNERS,
        help="Beam runner (DirectRunner runs Beam's FnApiRunner in this process tree). "
        "Beam pipeline options pass through (a flag that is neither this command's nor Beam's is an error), e.g. --direct_running_mode=multi_processing "
        "--direct_num_workers=2, --job_endpoint, --project/--region/--temp_location, --dry_run=True.",
    )
