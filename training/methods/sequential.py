"""Sequential: time step t trains on step t's data only, starting from step t-1's weights."""
from training.methods.base import Method


class Sequential(Method):
    name = "sequential"
