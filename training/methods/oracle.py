"""Oracle and Oracle-final: models trained from scratch on all data seen so far.

``oracle`` is TiC-CLIP's Oracle (Garg et al., ICLR 2024, Sec. 4 and Table 2): at every time
step t a fresh model is trained from a random initialisation on the data of steps 0..t with a
budget of (t + 1) x C samples, C being one step's budget. The run therefore holds one checkpoint
per step, its evaluation matrix is full (forward transfer included), and its total compute is
sum_t (t + 1) x C = T(T + 1)/2 x C, i.e. (T + 1)/2 x Sequential's T x C: 4x for TiC-DataComp's
T = 7 steps (Table 2: Oracle 1.2e19 MACs against Sequential's 3.0e18).

``oracle-final`` keeps only the last of these runs: one model from scratch at the final step on
all data with T x C (what ``scripts/run_medium_basic_oracle.sh`` of apple/ml-tic-clip trains,
``--train_num_samples`` = 7 x one step's samples); its matrix has a single row.
"""
from training.methods.base import Method


class Oracle(Method):
    name = "oracle"
    warm_start = False

    def compute_multiplier(self, t, n_steps):
        return float(t + 1)

    def data(self, t, sources):
        return list(sources[: t + 1])


class OracleFinal(Oracle):
    name = "oracle-final"

    def trains_at(self, t, n_steps):
        return t == n_steps - 1
