"""The embedded default input: a synthetic, time-evolving web.

``generate_web`` writes Common Crawl style WARC snapshots for 2014..2022 whose pages carry
``<img src alt>`` tags; ``SyntheticWebServer`` serves their images on 127.0.0.1 with the real
web's faults; ``ground_truth.parquet`` records what was planted so tests can measure the
pipeline against it.
"""
from benchmark_builder.synthetic_web.concepts import CLASS_NAMES, CONCEPTS, OBJECTS
from benchmark_builder.synthetic_web.generate import WebConfig, generate_web
from benchmark_builder.synthetic_web.server import SyntheticWebServer, load_catalogue

__all__ = ["CLASS_NAMES", "CONCEPTS", "OBJECTS", "WebConfig", "generate_web", "SyntheticWebServer", "load_catalogue"]
