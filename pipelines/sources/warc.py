"""WARC 1.0/1.1 (ISO 28500) and Common Crawl WAT reading that survives broken archives.

fastwarc does the parsing (fast, C++). Real crawls contain broken records and archives cut
short by interrupted uploads; fastwarc then raises or stops. This reader turns every such
event into a ``RecordError`` at the byte offset where it happened and carries on with the next
gzip member (Common Crawl writes one member per record), so one bad record never costs the
rest of the file. At the end it checks that the last gzip member is complete, which catches
a truncated archive that the parser would otherwise end silently.
"""
from __future__ import annotations

import datetime as dt
import io
import zlib
from dataclasses import dataclass, field
from typing import Iterator

from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipelines import io as pio

GZIP_MAGIC = b"\x1f\x8b\x08"


@dataclass
class Record:
    offset: int
    warc_type: str
    record_id: str | None
    target_uri: str | None
    date: dt.datetime | None
    headers: dict[str, str]
    http_status: int | None = None
    http_headers: dict[str, str] = field(default_factory=dict)
    payload: bytes = b""
    http_ok: bool = True  # False: a response record whose block is not an HTTP message


@dataclass
class RecordError:
    offset: int
    reason: str  # truncated_archive | malformed_record | unreadable_file
    message: str
    record_id: str | None = None


def parse_warc_date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    v = value.strip().replace("Z", "+00:00")
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _member_end(data: bytes, start: int) -> int | None:
    """End offset of the gzip member starting at ``start``; None if it is cut short."""
    d = zlib.decompressobj(wbits=31)
    try:
        pos = start
        while pos < len(data):
            chunk = data[pos : pos + (1 << 20)]
            d.decompress(chunk)
            pos += len(chunk)
            if d.eof:
                return pos - len(d.unused_data)
    except zlib.error:
        return None
    return None


def _next_plain_record(data: bytes, after: int) -> int | None:
    i = data.find(b"\nWARC/1.", after + 1)
    return None if i == -1 else i + 1


def _convert(rec, base: int, parse_payload: bool) -> Record:
    h = rec.headers
    warc_type = rec.record_type.name if hasattr(rec.record_type, "name") else str(rec.record_type)
    out = Record(
        offset=base + rec.stream_pos,
        warc_type=warc_type,
        record_id=h.get("WARC-Record-ID"),
        target_uri=h.get("WARC-Target-URI"),
        date=parse_warc_date(h.get("WARC-Date")),
        headers={k: v for k, v in h},
    )
    if not parse_payload:
        return out
    if rec.record_type == WarcRecordType.response:
        hh = rec.http_headers
        if hh is None or not hh.status_code:
            out.http_ok = False
        else:
            out.http_status = hh.status_code
            out.http_headers = {k.lower(): v for k, v in hh}
    out.payload = rec.reader.read()
    return out


def iter_records(path: str, types: tuple[str, ...] = ("response", "metadata", "warcinfo")) -> Iterator[Record | RecordError]:
    """Records of ``path`` (local or fsspec URL), with a ``RecordError`` for anything unreadable."""
    try:
        with pio.open_read(path) as f:
            data = f.read()
    except Exception as e:  # missing file, permission, network
        yield RecordError(0, "unreadable_file", f"{type(e).__name__}: {e}")
        return
    gz = data[:3] == GZIP_MAGIC
    wanted = 0
    for t in types:
        wanted |= getattr(WarcRecordType, t)
    base, last_start = 0, 0
    suspect: int | None = None  # member whose record parsed but was followed by garbage
    while base < len(data):
        it = ArchiveIterator(io.BytesIO(data[base:]), record_types=wanted, parse_http=True)
        failed, n = None, 0
        try:
            for rec in it:
                n += 1
                last_start = base + rec.stream_pos
                if suspect is not None:
                    yield RecordError(suspect, "malformed_record", "record followed by bytes that are not a WARC record "
                                      "(wrong Content-Length?)")
                    suspect = None
                try:
                    yield _convert(rec, base, parse_payload=True)
                except Exception as e:
                    yield RecordError(last_start, "malformed_record", f"{type(e).__name__}: {e}", rec.headers.get("WARC-Record-ID"))
        except Exception as e:  # fastwarc gives up on the rest of the stream
            failed = f"{type(e).__name__}: {e}"
        if failed is None:
            if gz:
                yield from _check_tail(data, last_start)
            return
        if not gz:
            yield RecordError(max(last_start, base), "malformed_record", failed)
            nxt = _next_plain_record(data, max(last_start, base))
        elif n:
            # the last good record's member held garbage after it, or the next member is bad:
            # resume at the next member and decide which on the next pass
            nxt = _member_end(data, last_start)
            suspect = last_start
        else:
            end = _member_end(data, base)
            if end is None:
                yield RecordError(base, "truncated_archive", f"gzip member at byte {base} ends before its data "
                                  f"({len(data) - base} bytes left): {failed}")
                return
            yield RecordError(base, "malformed_record", failed)
            suspect = None
            nxt = end
        if nxt is None or nxt <= base:
            break
        base = nxt
    if suspect is not None:
        yield RecordError(suspect, "malformed_record", "record followed by bytes that are not a WARC record "
                          "(wrong Content-Length?)")


def _check_tail(data: bytes, start: int) -> Iterator[RecordError]:
    """Walk the members from ``start`` to the end; an incomplete one means a truncated archive."""
    pos = start
    while pos < len(data):
        if data[pos : pos + 3] != GZIP_MAGIC:
            return
        end = _member_end(data, pos)
        if end is None:
            yield RecordError(pos, "truncated_archive", f"gzip member at byte {pos} ends before its data ({len(data) - pos} bytes left)")
            return
        pos = end
