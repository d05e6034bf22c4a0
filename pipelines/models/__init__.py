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

import logging

from pipelines.models.load import (  # noqa: F401 (the package's public names)
    LoadedCaptioner,
    LoadedModel,
    ModelLoadError,
    load_captioner,
    load_model,
    parse_spec,
)
from pipelines.models.registry import PRESETS  # noqa: F401

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
