"""Inputs from outside the project, taken safely: pickles, names that become paths, paths in SQL.

- :func:`load_pickle`: a restricted unpickler. Only containers, str, bytes, numbers and numpy
  arrays/scalars/dtypes can be built; any other global (``os.system``, ``builtins.eval``,
  ``subprocess.Popen``, a class's ``__reduce__``) is refused with :class:`UnsafePickle` before
  anything runs. CIFAR-100's python batches (Python 2 or 3 pickles of dicts with bytes keys,
  numpy arrays, lists) load; ``encoding="bytes"`` as CIFAR's own reader documents.
- :func:`check_name`: names that become one path component (variant names):
  ``[A-Za-z0-9_.-]+``, never ``.`` or ``..``.
- :func:`sql_string`: a SQL string literal for DuckDB statements that cannot take parameters
  (``read_parquet('...')`` in a view, ``attach '...'``); :func:`sql_identifier` for names.

Every refusal is an :class:`InputError` (a ``ValueError``) whose message names the input.
"""
from __future__ import annotations

import io
import pickle
import re


class InputError(ValueError):
    """Input from outside the project that is refused; the message says which and why."""


class UnsafePickle(InputError):
    pass


# (module, name) an allowed pickle may refer to. numpy moved ``core`` to ``_core`` in 2.0 and
# Python 2 pickles say ``__builtin__``/``copy_reg``: both spellings are listed.
_NUMPY = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
_NUMPY |= {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")}
_NUMPY |= {("numpy", "ndarray"), ("numpy", "dtype")}
_BUILTINS = {(m, n) for m in ("builtins", "__builtin__")
             for n in ("set", "frozenset", "complex", "bytearray", "bytes", "str", "int", "float", "bool", "list",
                       "tuple", "dict", "slice", "range")}
ALLOWED_GLOBALS = frozenset(_NUMPY | _BUILTINS | {("collections", "OrderedDict"), ("_codecs", "encode")})


class _Restricted(pickle.Unpickler):
    source = "<pickle>"

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickle(f"{self.source}: refused pickle: it refers to {module}.{name}; only containers, str, bytes, "
                           "numbers and numpy arrays may be loaded")

    def persistent_load(self, pid):
        raise UnsafePickle(f"{self.source}: refused pickle: it uses persistent ids")


def loads_pickle(data: bytes, source: str = "<pickle>", encoding: str = "bytes"):
    """Unpickle ``data`` allowing only plain data (see the module doc); ``source`` names it in errors."""
    u = _Restricted(io.BytesIO(data), encoding=encoding)
    u.source = source
    try:
        return u.load()
    except UnsafePickle:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise InputError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


def load_pickle(path: str, encoding: str = "bytes"):
    from pipelines.io import read_bytes

    return loads_pickle(read_bytes(path), path, encoding)


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is safe as one path component, else :class:`InputError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise InputError(f"bad {what} {name!r}: use letters, digits, '_', '.' and '-' (not '.' or '..')")
    return name


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'
