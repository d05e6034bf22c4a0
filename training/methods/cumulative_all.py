"""Cumulative-All: step t trains on all data of steps 0..t, sampled in proportion to size,
warm-started from step t-1 (TiC-CLIP's strongest replay baseline; unbounded memory).

``cumulative-all-plus`` is TiC-CLIP's Cumulative-All* (Garg et al., ICLR 2024, Table 2:
3.9e18 MACs on TiC-DataComp (M), 1.3 x Sequential's 3.0e18): the same data with the extra
compute the regularisation baselines (LwF, EWC) spend, option ``compute`` (default 1.3) x the
step's budget."""
from training.methods.base import Method


class CumulativeAll(Method):
    name = "cumulative-all"

    def data(self, t, sources):
        return list(sources[: t + 1])


class CumulativeAllPlus(CumulativeAll):
    name = "cumulative-all-plus"

    def compute_multiplier(self, t, n_steps):
        return self.option("compute", 1.3)
