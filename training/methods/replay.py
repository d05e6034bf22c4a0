"""Replay buffers over past time steps, shared by the cumulative protocols.

A buffer holds ``buffer_factor`` x the current step's data, split over the past steps by
``shares`` (TiC-CLIP used about twice one step's data); a past step's part is a deterministic
uid-hash subset of its shards, so the buffer needs no storage of its own and is the same on
every rank and after a resume.
"""
from __future__ import annotations

from training.data import Source


def buffer_sources(t: int, sources: list[Source], shares: list[float], buffer_factor: float) -> list[Source]:
    if t == 0:
        return [sources[0]]
    total = buffer_factor * sources[t].expected_size
    norm = sum(shares)
    out = [sources[t]]
    for k, share in zip(range(t), shares):
        want = total * share / norm
        out.append(sources[k].subset(want / max(1.0, sources[k].expected_size)))
    return out
