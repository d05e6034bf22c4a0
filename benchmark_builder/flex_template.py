"""Dataflow flex-template entry point (``infra/dataflow/flex_template.json``, ``Dockerfile``).

The launcher calls this file with the template's parameters in Dataflow's spelling
(``--data_dir=gs://...``, ``--year=2019``) followed by pipeline options (``--project``,
``--region``, ``--temp_location``, ...). Parameters named in the template become the build
command's flags (``--data-dir``); everything else goes to Beam, checked like any build flag.
"""
from __future__ import annotations

import json
import os
import sys

TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "infra", "dataflow",
                        "flex_template.json")


def template_parameters(path: str = TEMPLATE) -> list[str]:
    with open(path) as f:
        return [p["name"] for p in json.load(f)["parameters"]]


def build_argv(argv: list[str], parameters: list[str]) -> list[str]:
    """``build`` command line for the launcher's ``argv``."""
    out, benchmark = [], "tic-datacomp"
    for a in argv:
        name, eq, value = a[2:].partition("=") if a.startswith("--") else ("", "", "")
        if name == "benchmark" and eq:
            benchmark = value
        elif name in parameters and eq:
            out.append(f"--{name.replace('_', '-')}={value}")
        else:
            out.append(a)
    if not any(a == "--runner" or a.startswith("--runner=") for a in out):
        out.append("--runner=DataflowRunner")
    return ["build", benchmark, *out]


def main(argv: list[str] | None = None) -> int:
    from benchmark_builder.__main__ import main as cli

    return cli(build_argv(sys.argv[1:] if argv is None else argv, template_parameters()))


if __name__ == "__main__":
    sys.exit(main())
