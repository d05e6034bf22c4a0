"""Full fine-tuning: every parameter of both towers trains on each task, from the previous
task's weights (FoMo-in-Flux's reference point for compute and memory)."""
from training.methods.base import Method


class FullFT(Method):
    name = "full-ft"
