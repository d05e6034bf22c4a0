"""Stage summaries: in, kept, dropped by reason, seconds, rows/s; the same table for every stage.

Stats are data (img2dataset's ``_stats.json`` idea): a summary is built from the status rows a
stage wrote, so what is printed is what is on disk.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import pyarrow as pa

from pipelines.reasons import reason_family  # noqa: F401 (re-exported: the summaries' reason families)


@dataclass
class StageSummary:
    stage: str
    n_in: int = 0
    kept: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    seconds: float | None = None

    def add(self, status: str, reason: str | None = None, n: int = 1) -> None:
        self.n_in += n
        if status == "kept":
            self.kept += n
        else:
            self.dropped[reason_family(reason)] += n

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    @staticmethod
    def from_status_table(status: pa.Table, order: list[str]) -> list["StageSummary"]:
        """Per-stage summaries from final status rows: a row dropped at stage k passed stages < k."""
        stages = {s: StageSummary(s) for s in order}
        rank = {s: i for i, s in enumerate(order)}
        rows = zip(status.column("stage").to_pylist(), status.column("status").to_pylist(), status.column("reason").to_pylist())
        counts = collections.Counter(rows)
        for (stage, st, reason), n in counts.items():
            if stage not in rank:
                raise KeyError(f"status rows name an unknown stage {stage!r}")
            for s in order[: rank[stage]]:
                stages[s].add("kept", None, n)
            stages[stage].add(st, reason, n)
        return [stages[s] for s in order]

    def render(self) -> str:
        return StageSummary.render_all([self])

    @staticmethod
    def render_all(summaries: list["StageSummary"], seconds: float | None = None) -> str:
        head = f"{'stage':<11}{'in':>8}{'kept':>8}{'dropped':>9}{'seconds':>9}{'rows/s':>9}  dropped by reason"
        lines = [head, "-" * len(head)]
        for s in summaries:
            secs = s.seconds
            rate = f"{s.n_in / secs:>9.0f}" if secs and secs >= 0.1 else f"{'':>9}"
            reasons = ", ".join(f"{r} {n}" for r, n in s.dropped.most_common(6))
            more = len(s.dropped) - 6
            if more > 0:
                reasons += f", +{more} more"
            lines.append(f"{s.stage:<11}{s.n_in:>8}{s.kept:>8}{s.n_dropped:>9}{(f'{secs:.1f}' if secs is not None else ''):>9}{rate}  {reasons}")
        if seconds is not None and summaries:
            total = summaries[0].n_in
            lines.append(f"{'total':<11}{total:>8}{summaries[-1].kept:>8}{total - summaries[-1].kept:>9}{seconds:>9.1f}{total / max(seconds, 1e-9):>9.0f}")
        return "\n".join(lines)


TIMING_NAMESPACE = "stage_time"


def mark(element, stage: str):
    """Pass-through that records when ``element`` left ``stage`` (a Beam distribution metric), so a
    fused pipeline still reports how long each stage was busy."""
    from apache_beam.metrics import Metrics

    Metrics.distribution(TIMING_NAMESPACE, stage).update(int(time.time() * 1000))
    return element


def stage_seconds(result) -> dict[str, float]:
    """Busy span (first to last element out) of every marked stage of a finished pipeline."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        dists = result.metrics().query(MetricsFilter().with_namespace(TIMING_NAMESPACE))["distributions"]
    except Exception:  # runners without metrics support
        return {}
    out = {}
    for d in dists:
        r = d.committed if d.committed is not None else d.attempted
        if r is not None and r.count:
            out[d.key.metric.name] = max(out.get(d.key.metric.name, 0.0), (r.max - r.min) / 1000.0)
    return out
