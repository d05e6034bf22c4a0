"""What a build reads, as one object, so that no stage asks whether it reads the embedded web.

A build input (``build.build_input``: the ``--input`` files, or ``default_input()`` without them)
provides:

- ``files(cfg, layout)``: a context manager yielding the files to crawl, serving meanwhile
  whatever they point at (the embedded web's image server);
- ``source_root(layout)``: the directory the crawl records sources relative to (None: as given);
- ``fresh(cfg, layout, marker)`` / ``marker(cfg)``: whether the crawl's candidates (the
  candidates marker's content) are this input's, and what it adds to that marker;
- ``classes``: the name of its default class list (``benchmark_builder.classes``).

``NAMED`` holds the inputs a user picks by name where a file would otherwise go: as a class list
(``--classes NAME``), a template captioner's attribute table (``--model template:NAME``), a
class-incremental dataset (``python -m training cil --dataset NAME``) and the caption words of
FoMo's concepts. A named input provides ``class_names()``, ``class_words()``,
``attribute_table(layout)``, ``task_items(per_class_train, per_class_test, seed, size)`` and
``reference_images(concepts, per_concept, seed)``. The embedded synthetic web
(``benchmark_builder/synthetic_web/source.py``) is the one named input and the default input.
"""
from __future__ import annotations

from benchmark_builder.synthetic_web.source import EMBEDDED_WEB

NAMED = {EMBEDDED_WEB.name: EMBEDDED_WEB}


def default_input():
    """The input of a build without ``--input``, and the source of the defaults that need one
    (the CLIP filters' reference images, ``build --from datacomp``'s pool)."""
    return EMBEDDED_WEB
