"""Cumulative-All: step t trains on all data of steps 0..t, sampled in proportion to size,
warm-started from step t-1 (TiC-CLIP's strongest replay baseline; unbounded memory)."""
from training.methods.base import Method


class CumulativeAll(Method):
    name = "cumulative-all"

    def data(self, t, sources):
        return list(sources[: t + 1])
