"""Run provenance in one place: the code version a build or a training run records
(``manifest.json``, every checkpoint), and the device ``--device auto`` resolves to."""
from __future__ import annotations

import os
import subprocess


def code_version() -> str:
    """``git describe --always --dirty`` of this checkout; "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except Exception:
        return "unknown"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other value unchanged."""
    if device != "auto":
        return device
    import torch  # here, not at the top: the builder records provenance without loading torch

    return "cuda" if torch.cuda.is_available() else "cpu"
