"""Replay buffers over past time steps, shared by the cumulative protocols.

A buffer holds ``buffer_factor`` x the current step's data D, split over the past steps by
``shares``; a past step's part is a deterministic uid-hash subset of its shards, so the buffer
needs no storage of its own and is the same on every rank and after a resume.

The default ``buffer_factor`` is 1.0: TiC-CLIP (Garg et al., ICLR 2024, Sec. 4, "Cumulative")
gives Cumulative-Exp and Cumulative-Equal a replay buffer of size ~D, so a step trains on the
new data and a buffer of the same size (2D in all, half of it new); Cumulative-All keeps
everything. Since sources are drawn in proportion to their size, half of a step's samples come
from the new data and half from the buffer.
"""
from __future__ import annotations

from training.data import Source

BUFFER_FACTOR = 1.0


def buffer_sources(t: int, sources: list[Source], shares: list[float], buffer_factor: float = BUFFER_FACTOR) -> list[Source]:
    if t == 0:
        return [sources[0]]
    total = buffer_factor * sources[t].expected_size
    norm = sum(shares)
    out = [sources[t]]
    for k, share in zip(range(t), shares):
        want = total * share / norm
        out.append(sources[k].subset(want / max(1.0, sources[k].expected_size)))
    return out
