"""ZeroShot-Merge: every task trains from the base (zero-shot) model; the task models are merged
into the running merge, which starts at the base and is what is evaluated. Default decay:
``mean`` (the uniform average of the base and every task model)."""
from training.methods.running_merge import RunningMerge


class ZeroShotMerge(RunningMerge):
    name = "zeroshot-merge"
    start = "base"
    default_decay = "mean"
