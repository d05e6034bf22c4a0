"""Continual methods, one file each; ``METHODS`` maps a protocol name to its class."""
from training.methods.base import Method, StepContext
from training.methods.cumulative_all import CumulativeAll, CumulativeAllPlus
from training.methods.cumulative_equal import CumulativeEqual
from training.methods.cumulative_exp import CumulativeExp
from training.methods.ewc import EWC
from training.methods.lwf import LwF
from training.methods.oracle import Oracle, OracleFinal
from training.methods.patching import Patching
from training.methods.sequential import Sequential

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Sequential, CumulativeAll, CumulativeExp, CumulativeEqual, Oracle, OracleFinal, Patching, LwF, EWC,
                        CumulativeAllPlus)
}


def _update_methods() -> dict[str, type[Method]]:
    """FoMo-in-Flux's update and merge methods (run by ``python -m training.fomo``), kept out of
    ``METHODS`` so the TiC protocol list and its tests stay as they are."""
    from training.methods.bitfit import BitFit
    from training.methods.dora import DoRAMethod
    from training.methods.ema_merge import EMAMerge
    from training.methods.finetune_merge import FinetuneMerge
    from training.methods.full_ft import FullFT
    from training.methods.layernorm_only import LayerNormOnly
    from training.methods.lock_image import LockImage
    from training.methods.lock_text import LockText
    from training.methods.lora import LoRAMethod
    from training.methods.offline_merge import OfflineMerge
    from training.methods.online_ewc import OnlineEWC
    from training.methods.si import SI
    from training.methods.zeroshot_merge import ZeroShotMerge

    return {m.name: m for m in (FullFT, LockText, LockImage, LoRAMethod, DoRAMethod, BitFit, LayerNormOnly, OnlineEWC,
                                SI, EMAMerge, FinetuneMerge, ZeroShotMerge, OfflineMerge)}


UPDATE_METHODS: dict[str, type[Method]] = _update_methods()


def get_method(name: str, options: dict | None = None) -> Method:
    try:
        return {**METHODS, **UPDATE_METHODS}[name](options)
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join([*METHODS, *UPDATE_METHODS])}") from None


__all__ = ["METHODS", "UPDATE_METHODS", "Method", "StepContext", "get_method"]
