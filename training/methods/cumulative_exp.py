"""Cumulative-Exp: current data plus a fixed-size replay buffer whose shares halve with the
age of the past step (the previous step 1/2, the one before 1/4, ...; TiC-CLIP). Option
``buffer_factor`` (default 2.0)."""
from training.methods.base import Method
from training.methods.replay import buffer_sources


class CumulativeExp(Method):
    name = "cumulative-exp"

    def data(self, t, sources):
        return buffer_sources(t, sources, [0.5 ** (t - k) for k in range(t)], self.option("buffer_factor", 2.0))
