"""WARC 1.0/1.1 (ISO 28500) and Common Crawl WAT reading that streams and survives broken archives.

The reader is a small streaming parser of its own, not fastwarc: fastwarc reads fast, but on a
broken record it raises and ends the file (resuming meant a new iterator over a copy of the
rest of the file, once per bad record), it cannot bound how far a gzip member inflates, its
length filter skips over-long records without a word, and its HTTP parser accepts non-HTTP
blocks (a response block ``notttp`` comes back with status code ``notttp``). Here:

- **Streaming.** Compressed bytes are read 64 KiB at a time and inflated with
  ``zlib.decompressobj(...).decompress(data, max_length)``, 256 KiB of output per call; a record
  is held in memory only up to ``max_record_bytes``. Plain, gzip-per-record (Common Crawl) and
  whole-file gzip archives read the same way: the inflated members are one byte stream.
- **Caps.** A record whose headers plus ``Content-Length`` pass ``max_record_bytes`` (default
  32 MiB) is skipped unread (its bytes streamed past) and reported as ``record_too_large``. A
  gzip member that inflates past ``max_member_bytes`` (default 1 GiB; a decompression bomb) is
  abandoned at that point, also ``record_too_large``, and reading resumes at the next member.
  Whole-file gzip archives are one member: raise ``max_member_bytes`` for ones larger than that.
- **Resynchronisation in linear time.** After a bad record the reader searches forward for the
  next line that starts ``WARC/1.`` in the bytes it holds and the ones it reads next; after a
  corrupt or cut gzip member it seeks to the member's start + 1 and scans the compressed bytes
  for the next gzip magic whose first inflated bytes are ``WARC/`` (a magic inside compressed
  data is not a member). Nothing is copied; every byte is read about once (twice for a bad
  member).
- **Checksums.** A record is given out only after its gzip member's CRC checked out when the
  member ends with the record (Common Crawl's layout); records inside a larger member (whole-file
  gzip) are given out as they are inflated, before the member's CRC is known.
- **Reasons.** Every problem is a ``RecordError`` with the byte offset of its record (the gzip
  member's offset in compressed files, the record's own offset in plain ones):
  ``malformed_record`` (headers that are not WARC, bad ``Content-Length``, garbage between
  records, corrupt gzip data), ``truncated_archive`` (the file ends inside a record or a gzip
  member), ``record_too_large``, ``unreadable_file``. One error per event; the next record is
  always read.

Response records get their HTTP status line and headers parsed (``http_ok`` False when the block
is not an HTTP response); the payload is the bytes after the HTTP header, as stored.
"""
from __future__ import annotations

import datetime as dt
import re
import zlib
from dataclasses import dataclass, field
from typing import Iterator

from pipelines import io as pio

GZIP_MAGIC = b"\x1f\x8b\x08"
DEFAULT_MAX_RECORD_BYTES = 32 << 20
DEFAULT_MAX_MEMBER_BYTES = 1 << 30
MAX_HEADER_BYTES = 64 << 10  # WARC header block of one record
_READ = 1 << 16  # compressed bytes per read
_INFLATE = 1 << 18  # most inflated bytes per decompress call
_PROBE = 1 << 12  # compressed bytes tried at a candidate gzip member when resynchronising
_VERSION = re.compile(rb"WARC/\d+\.\d+\r?$")
_HTTP_STATUS = re.compile(rb"HTTP/\d(?:\.\d)?[ \t]+(\d{3})(?:[ \t].*)?\r?$")


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
    reason: str  # truncated_archive | malformed_record | record_too_large | unreadable_file
    message: str
    record_id: str | None = None


def parse_warc_date(value: str | None) -> dt.datetime | None:
    if not value or not isinstance(value, str):
        return None
    v = value.strip().replace("Z", "+00:00")
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


@dataclass
class _Break:
    """The stream cannot go on past here until ``resume()``: a bad, cut or oversized gzip member."""

    offset: int  # file offset of the member
    reason: str
    message: str


class _Stream:
    """A plain or gzip file as one inflated byte stream behind a bounded buffer.

    Positions are stream (inflated) positions; ``buf`` holds ``[base, base + len(buf))``.
    ``fill(end)`` reads until the buffer reaches ``end``; it stops early at the end of the file or
    at a break, which the caller reports and then passes with ``resume()``.
    """

    def __init__(self, f, head: bytes, max_member_bytes: int):
        """``head``: the first bytes of ``f``, already read (they tell gzip from plain)."""
        self.f, self.gz, self.max_member = f, head.startswith(GZIP_MAGIC), max_member_bytes
        self.buf = bytearray() if self.gz else bytearray(head)
        self.base = 0
        self.done = False  # end of file, nothing pending
        self.brk: _Break | None = None
        self.members: list[tuple[int, int]] = [(0, 0)]  # (stream position, file offset) of member starts
        # gzip state
        self.d = None  # decompressobj of the member being inflated
        self.pending = head if self.gz else b""  # compressed bytes not yet inflated
        self.file_pos = len(head)  # file offset after the last read
        self.member_offset = 0
        self.member_out = 0

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def byte(self, pos: int) -> int:
        return self.buf[pos - self.base]

    def get(self, a: int, b: int) -> bytes:
        return bytes(self.buf[a - self.base : b - self.base])

    def find(self, sub: bytes, a: int, b: int | None = None) -> int:
        i = self.buf.find(sub, a - self.base, None if b is None else b - self.base)
        return -1 if i < 0 else i + self.base

    def fill(self, end: int) -> bool:
        """True when the buffer reaches ``end``."""
        while self.end < end:
            if not self._more():
                return False
        return True

    def drop(self, before: int) -> None:
        """Forget the bytes before ``before`` (they will not be looked at again)."""
        n = min(before, self.end) - self.base
        if n > 0:
            del self.buf[:n]
            self.base += n
        while len(self.members) > 1 and self.members[1][0] <= self.base:
            self.members.pop(0)

    def offset_at(self, pos: int) -> int:
        if not self.gz:
            return pos
        off = self.members[0][1]
        for p, o in self.members:
            if p > pos:
                break
            off = o
        return off

    def is_member_start(self, pos: int) -> bool:
        return any(p == pos for p, _ in self.members)

    # -- reading ------------------------------------------------------------------------------
    def _read(self) -> bytes:
        chunk = self.f.read(_READ)
        self.file_pos += len(chunk)
        return chunk

    def _more(self) -> bool:
        if self.brk is not None or self.done:
            return False
        if not self.gz:
            chunk = self._read()
            if not chunk:
                self.done = True
                return False
            self.buf += chunk
            return True
        if self.d is None:
            return self._start_member()
        at_eof = False
        if not self.pending:
            self.pending = self._read()
            at_eof = not self.pending  # zlib may still hold output of input it has taken
        try:
            out = self.d.decompress(self.pending, _INFLATE)
        except zlib.error as e:
            self._break("malformed_record", f"corrupt gzip member at byte {self.member_offset}: {e}")
            return False
        if self.d.eof:
            self.pending, self.d = self.d.unused_data, None
        else:
            self.pending = self.d.unconsumed_tail
            if at_eof and not out:
                self._break("truncated_archive", f"gzip member at byte {self.member_offset} ends before its end "
                            f"(the file stops at byte {self.file_pos})")
                return False
        self.member_out += len(out)
        if self.member_out > self.max_member:
            self._break("record_too_large", f"gzip member at byte {self.member_offset} inflates past "
                        f"{self.max_member} bytes")
            return False
        self.buf += out
        return True

    def _start_member(self) -> bool:
        while len(self.pending) < len(GZIP_MAGIC):
            chunk = self._read()
            if not chunk:
                break
            self.pending += chunk
        if not self.pending:
            self.done = True
            return False
        off = self.file_pos - len(self.pending)
        self.member_offset = off
        if not self.pending.startswith(GZIP_MAGIC):
            self._break("malformed_record", f"bytes at {off} are not a gzip member")
            return False
        self.d = zlib.decompressobj(wbits=31)
        self.member_out = 0
        if self.members[-1][0] == self.end:
            self.members[-1] = (self.end, off)
        else:
            self.members.append((self.end, off))
        return True

    def _break(self, reason: str, message: str) -> None:
        self.brk = _Break(self.member_offset, reason, message)
        self.d = None

    def resume(self) -> None:
        """Go on after a break: at the next gzip member after the bad member's first byte whose
        data starts with a WARC record (a gzip magic inside compressed data is not one)."""
        start = self.member_offset + 1
        self.brk = None
        cur = self.file_pos - len(self.pending)
        if start >= cur:
            self.pending = self.pending[start - cur :]
        else:
            try:
                self.f.seek(start)
                self.file_pos, self.pending = start, b""
            except Exception:  # not seekable: scan on from what is unread
                pass
        keep = len(GZIP_MAGIC) - 1
        while True:
            i = self.pending.find(GZIP_MAGIC)
            if i < 0:
                self.pending = self.pending[-keep:]
                chunk = self._read()
                if not chunk:
                    self.pending, self.done = b"", True
                    return
                self.pending += chunk
                continue
            self.pending = self.pending[i:]
            while len(self.pending) < _PROBE:
                chunk = self._read()
                if not chunk:
                    break
                self.pending += chunk
            if _starts_record(self.pending[:_PROBE]):
                return
            self.pending = self.pending[1:]


def _starts_record(data: bytes) -> bool:
    """Whether ``data`` begins a gzip member whose first inflated bytes are ``WARC/``."""
    try:
        return zlib.decompressobj(wbits=31).decompress(data, 5) == b"WARC/"
    except zlib.error:
        return False


def _parse_headers(block: bytes) -> list[tuple[str, str]]:
    """``Name: value`` lines (continuation lines folded in), decoded as UTF-8 (WARC 1.1)."""
    out: list[list[str]] = []
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        if not line:
            continue
        if line[0] in " \t" and out:
            out[-1][1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            out.append([name.strip(), value.strip()])
    return [(k, v) for k, v in out]


def _parse_http(block: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, lower-cased headers, body) of an HTTP response block; None if it is not one."""
    end, sep = block.find(b"\r\n\r\n"), 4
    lf = block.find(b"\n\n", 0, end + 1 if end >= 0 else len(block))
    if lf >= 0 and (end < 0 or lf < end):
        end, sep = lf, 2
    if end < 0:
        return None
    head = block[:end]
    first, _, rest = head.partition(b"\n")
    m = _HTTP_STATUS.match(first)
    if not m:
        return None
    headers = {k.lower(): v for k, v in _parse_headers(rest)}
    return int(m.group(1)), headers, block[end + sep :]


class _Reader:
    def __init__(self, stream: _Stream, wanted: set[str], max_record: int):
        self.s, self.wanted, self.max_record = stream, wanted, max_record

    def _header_end(self, start: int) -> tuple[int, int] | None:
        """(end of the WARC header block, length of the blank line after it)."""
        s, scan = self.s, start
        limit = start + MAX_HEADER_BYTES
        while True:
            crlf = s.find(b"\r\n\r\n", max(start, scan - 3), min(s.end, limit + 4))
            lf = s.find(b"\n\n", max(start, scan - 1), crlf + 1 if crlf >= 0 else min(s.end, limit + 2))
            hits = [(i, n) for i, n in ((crlf, 4), (lf, 2)) if 0 <= i < limit]
            if hits:
                return min(hits)
            scan = s.end
            if scan >= limit:
                return None
            s.fill(min(limit, scan + _READ))
            if s.end == scan:
                return None

    def _resync(self, pos: int) -> int:
        """Stream position of the next line starting ``WARC/1.`` at or after ``pos`` (or the end of data)."""
        s = self.s
        while True:
            i = s.find(b"WARC/", pos)
            while i >= 0:
                if not s.fill(i + 7):
                    break
                if s.get(i + 5, i + 7) == b"1." and (i == 0 or s.is_member_start(i) or
                                                     (i > s.base and s.byte(i - 1) == 0x0A)):
                    return i
                i = s.find(b"WARC/", i + 1)
            keep = max(pos, s.end - 6)
            s.drop(keep - 1 if keep > s.base else keep)
            pos = keep
            if not s.fill(s.end + 1):
                return s.end

    def _skip_blank(self, pos: int) -> int:
        s = self.s
        while True:
            while pos < s.end and s.byte(pos) in (0x0D, 0x0A):
                pos += 1
            if pos < s.end or not s.fill(pos + 1):
                return pos

    def _trailer_ok(self, pos: int) -> bool:
        """After a block: the blank line that ends a record, or else CR/LFs and then the next
        record or the end of the data. Bytes after a proper end are the next record's problem."""
        s = self.s
        s.fill(pos + 16 + 5)
        if s.get(pos, pos + 4) == b"\r\n\r\n":
            return True
        i = pos
        while i < s.end and i < pos + 16 and s.byte(i) in (0x0D, 0x0A):
            i += 1
        if i >= s.end:
            return True
        return s.get(i, i + 5) == b"WARC/" or (i + 5 > s.end and b"WARC/".startswith(s.get(i, s.end)))

    def _skip(self, pos: int, n: int) -> tuple[int, bool]:
        """Stream past ``n`` bytes from ``pos``; (new position, whether all were there)."""
        s, end = self.s, pos + n
        while s.end < end:
            s.drop(s.end)
            if not s.fill(min(end, s.end + _INFLATE)):
                s.drop(s.end)
                return s.end, False
        s.drop(end)
        return end, True

    def _error_at_end(self, offset: int, record_id: str | None, default_reason: str, message: str):
        """The data ended inside a record: the break's reason if there is one, else ``default_reason``."""
        s = self.s
        if s.brk is not None:
            err = RecordError(offset, s.brk.reason, s.brk.message, record_id)
            s.resume()
            return err
        return RecordError(offset, default_reason, message, record_id)

    def records(self) -> Iterator[Record | RecordError]:
        s = self.s
        pos = 0
        while True:
            pos = self._skip_blank(pos)
            s.drop(pos)
            if pos >= s.end:
                if s.brk is None:
                    return
                yield RecordError(s.brk.offset, s.brk.reason, s.brk.message)
                s.resume()
                continue
            start = pos
            offset = s.offset_at(start)
            he = self._header_end(start)
            if he is None:
                yield self._no_header(start, offset)
                pos = self._resync(start + 1)
                continue
            hend, sep = he
            head = s.get(start, hend)
            first, _, rest = head.partition(b"\n")
            headers = _parse_headers(rest)
            low = {k.lower(): v for k, v in headers}
            rid = low.get("warc-record-id")
            clen = low.get("content-length", "")
            if not _VERSION.match(first) or not (clen.isascii() and clen.isdigit()):
                why = "not a WARC version line" if not _VERSION.match(first) else f"bad Content-Length {clen[:40]!r}"
                yield RecordError(offset, "malformed_record", f"record at {offset}: {why}", rid)
                pos = self._resync(start + 1)
                continue
            n = int(clen)
            body = hend + sep
            if body - start + n > self.max_record:
                yield RecordError(offset, "record_too_large", f"record at {offset} holds {n} bytes, more than "
                                  f"{self.max_record}", rid)
                pos, complete = self._skip(body, n)
                if not complete and s.brk is not None:
                    s.resume()  # the same event: already reported
                continue
            err = self._incomplete(offset, rid, body, n)
            if err is not None:
                yield err
                pos = self._resync(start + 1)
                continue
            pos = body + n
            wtype = low.get("warc-type", "").strip().lower()
            if wtype in self.wanted:
                yield self._record(offset, wtype, rid, low, headers, body, n)

    def _no_header(self, start: int, offset: int) -> RecordError:
        """The error for data at ``start`` where no record header ends: a cut archive if it looks like one."""
        s = self.s
        s.fill(start + 5)
        looks_warc = b"WARC/".startswith(s.get(start, min(s.end, start + 5)))
        if s.end - start < MAX_HEADER_BYTES and looks_warc:
            return self._error_at_end(offset, None, "truncated_archive", f"the data ends inside the headers of the record at {offset}")
        return RecordError(offset, "malformed_record", f"no WARC record header at {offset}")

    def _incomplete(self, offset: int, rid: str | None, body: int, n: int) -> RecordError | None:
        """The error of a record whose ``n`` content bytes at ``body`` are cut, followed by bytes that are
        not a record, or inside a gzip member that failed its checksum; None for a whole record."""
        s = self.s
        if not s.fill(body + n):
            return self._error_at_end(offset, rid, "truncated_archive", f"the data ends inside the record at {offset}")
        if not self._trailer_ok(body + n):
            return RecordError(offset, "malformed_record", f"record at {offset} is followed by bytes that are not a "
                               "WARC record (wrong Content-Length?)", rid)
        if s.brk is not None and s.brk.offset == offset and s.end <= body + n + 21:
            # the record's own gzip member is corrupt or cut after its data: its checksum failed
            return self._error_at_end(offset, rid, "malformed_record", "")
        return None

    def _record(self, offset: int, wtype: str, rid: str | None, low: dict, headers, body: int, n: int) -> Record:
        """The record of type ``wtype`` with its ``n`` content bytes at ``body`` (a response's HTTP head parsed)."""
        rec = Record(offset=offset, warc_type=wtype, record_id=rid, target_uri=low.get("warc-target-uri"),
                     date=parse_warc_date(low.get("warc-date")), headers=dict(headers))
        block = self.s.get(body, body + n)
        if wtype == "response":
            http = _parse_http(block)
            if http is None:
                rec.http_ok = False
            else:
                rec.http_status, rec.http_headers, block = http
        rec.payload = block
        return rec


def iter_records(path: str, types: tuple[str, ...] = ("response", "metadata", "warcinfo"),
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[Record | RecordError]:
    """Records of ``path`` (local or fsspec URL), with a ``RecordError`` for anything unreadable."""
    try:
        f = pio.open_read(path)
    except Exception as e:  # missing file, permission, network
        yield RecordError(0, "unreadable_file", f"{type(e).__name__}: {e}")
        return
    with f:
        try:
            head = f.read(len(GZIP_MAGIC))
            if 0 < len(head) < len(GZIP_MAGIC) and GZIP_MAGIC.startswith(head):
                yield RecordError(0, "truncated_archive", f"the file ends inside the gzip magic ({len(head)} bytes)")
                return
            yield from _Reader(_Stream(f, head, max_member_bytes), set(types), max_record_bytes).records()
        except OSError as e:  # the file went away or the network failed mid-read
            yield RecordError(0, "unreadable_file", f"{type(e).__name__}: {e}")
