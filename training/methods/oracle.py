"""Oracle: one run from scratch on the data of all steps with T times one step's compute.

It trains once, at the last time step, so its run holds a single checkpoint (the final
model) and its summary shows T x the per-step compute, the reference TiC-CLIP compares
every continual method against."""
from training.methods.base import Method


class Oracle(Method):
    name = "oracle"
    warm_start = False

    def trains_at(self, t, n_steps):
        return t == n_steps - 1

    def compute_multiplier(self, t, n_steps):
        return float(n_steps)

    def data(self, t, sources):
        return list(sources[: t + 1])
