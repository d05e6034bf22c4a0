"""Models in one place: loading (``load``), the registry of this project's presets
(``registry``, configs in ``configs/``) and encoding (``encode``: batched, normalised image and
text embeddings, the zero-shot classifier, the ``{c}`` template format).

    from pipelines.models import load_model
    from pipelines.models.encode import encode_images, zero_shot_classifier

open_clip warns "No pretrained weights loaded" each time it builds a model without a
``pretrained`` tag, which this project does for every checkpoint it loads (the architecture is
built first, then the checkpoint's weights are loaded into it). ``pipelines.models`` says it
once per process, with what it means, and drops the repeats (``OncePerProcess``).
"""
from __future__ import annotations

import importlib
import logging

from pipelines.models.errors import ModelLoadError  # noqa: F401 (the package's public names)

# the rest load torch and open_clip (seconds): imported on first use, so a command that never
# loads a model (a build with the basic filter) does not pay for them
_LAZY = {"LoadedCaptioner": "load", "LoadedModel": "load", "load_captioner": "load", "load_model": "load",
         "parse_spec": "load", "PRESETS": "registry"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


NO_PRETRAINED = "No pretrained weights loaded"
NO_PRETRAINED_NOTE = (
    "open_clip builds each model randomly initialised and says 'No pretrained weights loaded': for a "
    "NAME:/path/to/checkpoint spec the checkpoint's weights are loaded right after, so the model is the "
    "trained one; a bare NAME spec (a preset such as tic-tiny-32) does start from random weights. "
    "(said once per command)"
)


class OncePerProcess(logging.Filter):
    """Lets the first "No pretrained weights loaded" record through, reworded to say what it means,
    and drops the repeats; every other record passes unchanged."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if NO_PRETRAINED not in str(record.msg):
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = NO_PRETRAINED_NOTE, ()
        return True


def _install_filter() -> None:
    # open_clip logs through the root logger (``logging.warning``); a filter on a logger sees only
    # the records logged on it, so the filter sits on the root logger and on open_clip's own.
    once = OncePerProcess()
    for name in ("", "open_clip", "open_clip.factory"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerProcess) for f in logger.filters):
            logger.addFilter(once)


_install_filter()
