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
        deadline = time.time() + 60
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("Beam local job service exited at start-up")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("Beam local job service did not open its port in 60 s")
        yield f"localhost:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def pipeline_options(cfg: RunnerConfig, job_name: str | None = None) -> Iterator[PipelineOptions]:
    """PipelineOptions for ``cfg``, with whatever local service the runner needs kept alive."""
    from apache_beam.options.pipeline_options import PipelineOptions

    cfg.validate()
    args = list(cfg.beam_args)
    if job_name and cfg.runner == "DataflowRunner" and not cfg._has("--job_name"):
        args.append(f"--job_name={job_name}")
    if cfg.runner == "DirectRunner":
        yield PipelineOptions([f"--runner={_LOCAL}", *args])
    elif cfg.runner == "PortableRunner" and not cfg._has("--job_endpoint"):
        env = [] if cfg._has("--environment_type") else ["--environment_type=LOOPBACK"]
        with local_job_service() as endpoint:
            yield PipelineOptions(["--runner=PortableRunner", f"--job_endpoint={endpoint}", *env, *args])
    else:
        yield PipelineOptions([f"--runner={cfg.runner}", *args])


def add_runner_arguments(parser) -> None:
    parser.add_argument(
        "--runner",
        default=os.environ.get("BEAM_RUNNER", "DirectRunner"),
        choices=RUNNERS,
        help="Beam runner (DirectRunner runs Beam's FnApiRunner in this process tree). "
        "Unknown flags are passed to Beam, e.g. --direct_running_mode=multi_processing "
        "--direct_num_workers=2, --job_endpoint, --project/--region/--temp_location, --dry_run=True.",
    )
