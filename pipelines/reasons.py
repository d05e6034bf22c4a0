"""The vocabulary of drop reasons: families, and which failures are worth another try.

A reason is ``family`` or ``family:detail`` (``http_503``, ``blocked_address:loopback``,
``duplicate_of:<uid>``). Transient reasons are failures of the moment, not of the sample: a
timeout, a shard's deadline, HTTP 429 and any 5xx, a refused or reset connection. They are
what ``build --retry-failed`` fetches again; every other reason is final.
"""
from __future__ import annotations

# "http_5xx" stands for every http_500 .. http_599
TRANSIENT = ("timeout", "shard_deadline", "http_429", "http_5xx", "connection_error", "connection_reset")


def family(reason: str | None) -> str:
    """``blocked_address:loopback`` -> ``blocked_address``; None -> ``-``."""
    return "-" if reason is None else reason.partition(":")[0]


def reason_family(reason: str | None) -> str:
    """For summaries: ``duplicate_of:<uid>`` -> ``duplicate_of``; a reason that carries a short
    value keeps it (``blocked_address:loopback``)."""
    if reason is None:
        return "-"
    head, _, tail = reason.partition(":")
    if not tail or len(tail) > 24:
        return head
    return reason


def is_http_5xx(reason: str | None) -> bool:
    head = family(reason)
    return head.startswith("http_") and head[5:].isdigit() and 500 <= int(head[5:]) <= 599


def is_transient(reason: str | None) -> bool:
    """Whether a download that failed with ``reason`` may succeed when tried again."""
    if reason is None:
        return False
    return family(reason) in TRANSIENT or is_http_5xx(reason)
