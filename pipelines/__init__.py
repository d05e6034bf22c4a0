"""Beam stages for building time-stamped image-text pools.

One module per stage under ``pipelines/transforms`` (plain functions for the logic, a thin
``PTransform`` to wire them), sources and sinks beside them, runner options in
``pipelines/options.py``. This package knows nothing of benchmarks or training.
"""
