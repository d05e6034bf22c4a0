"""Finetune-Merge: training continues from the previous task's fine-tuned weights (not the
merge); after each task the fine-tuned model is merged into the running merge, which starts at
the base model and is what is evaluated. Default decay: ``mean``."""
from training.methods.running_merge import RunningMerge


class FinetuneMerge(RunningMerge):
    name = "finetune-merge"
    start = "finetuned"
    default_decay = "mean"
