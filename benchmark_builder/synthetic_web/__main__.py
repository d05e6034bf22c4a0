"""``python -m benchmark_builder.synthetic_web WEB_DIR [PORT]``: serve a generated synthetic web."""
from benchmark_builder.synthetic_web.server import main

main()
