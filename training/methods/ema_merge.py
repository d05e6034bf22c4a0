"""EMA-Merge: each task trains from the running merge, which then takes the new model in with
weight 1 - ``decay`` (default 0.5); the merge is what is evaluated and carried on."""
from training.methods.running_merge import RunningMerge


class EMAMerge(RunningMerge):
    name = "ema-merge"
    start = "merge"
