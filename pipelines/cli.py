"""What every command line of the project shares, so that one concept has one spelling.

- ``--data-dir`` and ``--benchmark``: where a built benchmark lives (``add_data_args``).
- ``--model``: the model spec (``pipelines.models``); older spellings stay as deprecated
  aliases that still work and say so once (``add_model``).
- ``--years FIRST-LAST`` (a single ``YEAR`` too).
- ``--device auto|cpu|cuda``: ``auto`` picks a GPU when there is one (``add_device``).
- A user error (a bad flag value, no input files, a year outside the benchmark, a missing
  index, bad SQL) prints one line ``error: ...`` and exits 2 (``Parser``, ``exit_status``).
- ``--help`` shows an example (``example``).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator

from pipelines.safe_inputs import InputError

DEFAULT_DATA_DIR = "./data"
DEFAULT_BENCHMARK = "tic-datacomp"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``error: ...``, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def example(*lines: str) -> str:
    """An ``epilog`` that shows how the command is called."""
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


class _DeprecatedAlias(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        preferred = self.preferred  # type: ignore[attr-defined]
        if option_string != preferred:
            print(f"warning: {option_string} is deprecated; use {preferred}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_model(parser: argparse.ArgumentParser, *deprecated: str, default: str = "", help: str = "") -> None:
    """``--model`` (dest ``model``), with ``deprecated`` spellings that still work and warn."""
    action = parser.add_argument("--model", *deprecated, dest="model", default=default, action=_DeprecatedAlias,
                                 help=help + (f" ({', '.join(deprecated)}: deprecated spellings)" if deprecated else ""))
    action.preferred = "--model"


def add_data_args(parser: argparse.ArgumentParser, benchmark: bool = True) -> None:
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where built benchmarks live (default: %(default)s)")
    if benchmark:
        parser.add_argument("--benchmark", default=DEFAULT_BENCHMARK, help="benchmark name under the data dir (default: %(default)s)")


def add_device(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default, help="auto (a GPU if there is one, else the CPU) | cpu | cuda | cuda:N")


def exit_status(call: Callable[[], int], *kinds: type[BaseException]) -> int:
    """``call()``'s status; refused user input (``InputError``) and ``kinds`` raised inside
    print one line ``error: ...`` on stderr and give status 2 instead of a traceback."""
    try:
        return call()
    except (InputError, *kinds) as e:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message.splitlines()[0] if message else type(e).__name__}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def as_input_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Re-raise ``kinds`` raised inside as ``InputError`` (e.g. a model file that cannot be loaded)."""
    try:
        yield
    except kinds as e:
        raise InputError(str(e)) from None
