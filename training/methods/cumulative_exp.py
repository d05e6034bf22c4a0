"""Cumulative-Exp: current data plus a fixed-size replay buffer whose shares halve with the
age of the past step (the previous step 1/2, the one before 1/4, ...; TiC-CLIP, Garg et al.,
ICLR 2024, Sec. 4). Option ``buffer_factor``: the buffer's size in units of the current step's
data D (default 1.0, the paper's buffer of ~D; see ``training.methods.replay``)."""
from training.methods.base import Method
from training.methods.replay import BUFFER_FACTOR, buffer_sources


class CumulativeExp(Method):
    name = "cumulative-exp"

    def data(self, t, sources):
        return buffer_sources(t, sources, [0.5 ** (t - k) for k in range(t)], self.option("buffer_factor", BUFFER_FACTOR))
