"""Continual methods, one file each, and the one registry of them.

Each ``register(Class, *families)`` line below makes a method available to the continual families
that run it: ``tic`` (TiC protocols over a benchmark's time steps, ``python -m training tic``),
``fomo`` (FoMo-in-Flux concept streams, ``python -m training fomo``) and ``cil`` (class- and
domain-incremental task streams, ``python -m training cil``). ``methods(family)`` is a family's
list (``listed=False`` keeps a method out of the family's default list, e.g. ``make train-all``,
while it stays runnable by name); ``get_method(name, options, family)`` builds one. Adding a method
is one file under this folder and one ``register`` line (docs/architecture.md, "A continual method").
"""
from __future__ import annotations

from dataclasses import dataclass

from training.methods.base import Method, StepContext
from training.methods.bitfit import BitFit
from training.methods.clip_replay import ClipReplay, for_class_streams
from training.methods.cumulative_all import CumulativeAll, CumulativeAllPlus
from training.methods.cumulative_equal import CumulativeEqual
from training.methods.cumulative_exp import CumulativeExp
from training.methods.dora import DoRAMethod
from training.methods.ema_merge import EMAMerge
from training.methods.ewc import EWC
from training.methods.finetune_ce import FinetuneCE
from training.methods.finetune_merge import FinetuneMerge
from training.methods.full_ft import FullFT
from training.methods.gcl import GCL
from training.methods.gdro import GDRO
from training.methods.layernorm_only import LayerNormOnly
from training.methods.lock_image import LockImage
from training.methods.lock_text import LockText
from training.methods.lora import LoRAMethod
from training.methods.lwf import LwF
from training.methods.offline_merge import OfflineMerge
from training.methods.online_ewc import OnlineEWC
from training.methods.oracle import Oracle, OracleFinal
from training.methods.patching import Patching
from training.methods.sequential import Sequential
from training.methods.si import SI
from training.methods.zero_shot import ZeroShot
from training.methods.zeroshot_merge import ZeroShotMerge

FAMILIES = ("tic", "fomo", "cil")


@dataclass(frozen=True)
class Registered:
    name: str
    cls: type[Method]
    families: tuple[str, ...]
    listed: bool = True  # in the family's default list (make train-all, the docs' tables)


REGISTRY: list[Registered] = []


def register(cls: type[Method], *families: str, listed: bool = True) -> type[Method]:
    """Add a method to the registry under its ``name`` for ``families``; returns the class."""
    unknown = [f for f in families if f not in FAMILIES]
    if not families or unknown:
        raise ValueError(f"{cls.__name__}: families must be some of {', '.join(FAMILIES)}, got {families!r}")
    taken = [f for r in REGISTRY if r.name == cls.name for f in r.families if f in families]
    if taken:
        raise ValueError(f"method {cls.name!r} is already registered for {', '.join(taken)}")
    REGISTRY.append(Registered(cls.name, cls, tuple(families), listed))
    return cls


def unregister(name: str) -> None:
    """Remove every registration of ``name`` (tests that register a method for a while)."""
    REGISTRY[:] = [r for r in REGISTRY if r.name != name]


def methods(family: str, listed_only: bool = False) -> dict[str, type[Method]]:
    """A family's methods by name, in registration order (for ``tic``: TiC-CLIP's table order)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return {r.name: r.cls for r in REGISTRY if family in r.families and (r.listed or not listed_only)}


def get_method(name: str, options: dict | None = None, family: str | None = None) -> Method:
    """An instance of the method ``name`` of ``family`` (None: the first registration of that name,
    so ``ewc`` is TiC's EWC and the class-stream one needs ``family="cil"``)."""
    for r in REGISTRY:
        if r.name == name and (family is None or family in r.families):
            return r.cls(options)
    known = methods(family) if family else {r.name: r.cls for r in REGISTRY}
    raise ValueError(f"unknown protocol {name!r}; known: {', '.join(known)}")


# TiC-CLIP's protocols (Garg et al., ICLR 2024, Table 2), in the table's order; FoMo runs them too
register(Sequential, "tic", "fomo")
register(Patching, "tic", "fomo")
register(CumulativeExp, "tic", "fomo")
register(CumulativeEqual, "tic", "fomo")
register(CumulativeAll, "tic", "fomo")
register(EWC, "tic", "fomo")
register(LwF, "tic", "fomo")
register(CumulativeAllPlus, "tic", "fomo")
register(Oracle, "tic", "fomo")
register(OracleFinal, "tic", "fomo", listed=False)
# FoMo-in-Flux's update and merge methods
register(FullFT, "fomo")
register(LockText, "fomo")
register(LockImage, "fomo")
register(LoRAMethod, "fomo")
register(DoRAMethod, "fomo")
register(BitFit, "fomo")
register(LayerNormOnly, "fomo")
register(OnlineEWC, "fomo")
register(SI, "fomo")
register(EMAMerge, "fomo")
register(FinetuneMerge, "fomo")
register(ZeroShotMerge, "fomo")
register(OfflineMerge, "fomo")
# class- and domain-incremental methods (ewc and lwf: the TiC classes with class memory and class-text loss)
register(FinetuneCE, "cil")
register(ClipReplay, "cil")
register(GCL, "cil")
register(GDRO, "cil")
register(for_class_streams(EWC), "cil")
register(for_class_streams(LwF), "cil")
register(ZeroShot, "cil")

__all__ = ["FAMILIES", "REGISTRY", "Method", "StepContext", "get_method", "methods", "register", "unregister"]
