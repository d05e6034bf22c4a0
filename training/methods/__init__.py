"""Continual methods, one file each; ``METHODS`` maps a protocol name to its class."""
from training.methods.base import Method, StepContext
from training.methods.cumulative_all import CumulativeAll
from training.methods.cumulative_equal import CumulativeEqual
from training.methods.cumulative_exp import CumulativeExp
from training.methods.ewc import EWC
from training.methods.lwf import LwF
from training.methods.oracle import Oracle
from training.methods.patching import Patching
from training.methods.sequential import Sequential

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Sequential, CumulativeAll, CumulativeExp, CumulativeEqual, Oracle, Patching, LwF, EWC)
}


def get_method(name: str, options: dict | None = None) -> Method:
    try:
        return METHODS[name](options)
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "StepContext", "get_method"]
