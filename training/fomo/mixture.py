"""Per-batch data mixtures of FoMo-in-Flux: shares of the pretraining pool, the current task's
update data and a replay buffer of all past update data (default 0.33 / 0.34 / 0.33).

The buffer is a uniform sample of everything the stream has shown so far: each past task's
source is weighted by its size, so every past sample is equally likely, and ``buffer_size``
(0: unbounded) caps the buffer by keeping the same uid-hash fraction of every past task. At the
first task there is nothing to replay: the buffer's share goes to the pool and the current
task in proportion to theirs (the mixture sampler normalises the weights).
"""
from __future__ import annotations

import dataclasses

from training.data import Source

DEFAULT_SHARES = (0.33, 0.34, 0.33)  # pretraining pool, current task, replay buffer


def parse_shares(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in str(text).replace("/", ",").split(",")]
    if len(parts) != 3 or any(p < 0 for p in parts) or parts[1] <= 0:
        raise ValueError(f"mixture shares are pool,current,replay with current > 0, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def mixture_sources(t: int, tasks: list[Source], pool: Source | None, shares=DEFAULT_SHARES,
                    buffer_size: int = 0) -> list[Source]:
    """Sources with weights for task ``t``; the weights of the present groups sum to 1."""
    p_pool, p_cur, p_replay = shares
    past = list(tasks[:t])
    groups = {"pool": p_pool if pool is not None else 0.0, "current": p_cur, "replay": p_replay if past else 0.0}
    total = sum(groups.values())
    out = [dataclasses.replace(tasks[t], weight=groups["current"] / total)]
    if groups["pool"] > 0:
        out.append(dataclasses.replace(pool, weight=groups["pool"] / total))
    if groups["replay"] > 0:
        seen = sum(s.expected_size for s in past)
        keep = min(1.0, buffer_size / seen) if buffer_size else 1.0
        for s in past:
            s = s.subset(keep) if keep < 1.0 else s
            out.append(dataclasses.replace(s, weight=groups["replay"] / total * s.expected_size / (seen * keep)))
    return out
