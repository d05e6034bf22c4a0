"""Cumulative-Equal: current data plus a fixed-size replay buffer in which every past step has
an equal share (TiC-CLIP). Option ``buffer_factor`` (default 2.0: twice one step's data)."""
from training.methods.base import Method
from training.methods.replay import buffer_sources


class CumulativeEqual(Method):
    name = "cumulative-equal"

    def data(self, t, sources):
        return buffer_sources(t, sources, [1.0] * t, self.option("buffer_factor", 2.0))
