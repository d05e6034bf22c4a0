"""Cumulative-Equal: current data plus a fixed-size replay buffer in which every past step has
an equal share (TiC-CLIP, Garg et al., ICLR 2024, Sec. 4). Option ``buffer_factor``: the
buffer's size in units of the current step's data D (default 1.0, the paper's buffer of ~D;
see ``training.methods.replay``)."""
from training.methods.base import Method
from training.methods.replay import BUFFER_FACTOR, buffer_sources


class CumulativeEqual(Method):
    name = "cumulative-equal"

    def data(self, t, sources):
        return buffer_sources(t, sources, [1.0] * t, self.option("buffer_factor", BUFFER_FACTOR))
