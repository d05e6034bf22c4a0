"""The model registry: this project's open_clip presets (``configs/*.json``), registered with
open_clip once on import, so every ``NAME`` spec resolves the same in every process (a Beam
worker, a ``torchrun`` rank, a test)."""
from __future__ import annotations

import os

import open_clip

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
open_clip.add_model_config(CONFIG_DIR)

PRESETS = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))
