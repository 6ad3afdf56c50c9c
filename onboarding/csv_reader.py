"""Receiving files: streamed to disk with a size limit, sniffed, and CSV made uniform.

Nothing here holds a whole file in memory. A CSV is rewritten (in the upload's private
workspace) as UTF-8 with its original line number prepended to each record, so that every
later check can name the line a problem is on, whatever Spark's partitioning does.
A quoted field may hold commas, doubled quotes and line breaks: such a record spans
several lines, keeps its first line's number, and the file is then read in multi-line mode.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from onboarding.errors import bad_request, too_large
from onboarding.report import FileRejected

CHUNK = 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024  # one record; a longer line is refused, not buffered
MAX_FILENAME = 255

Progress = Callable[[str, float], None]

# Declared encodings and the codec that reads them (GB18030 is a superset of GBK/GB2312).
ENCODINGS: dict[str, str] = {
    "utf-8": "utf-8", "utf8": "utf-8", "utf-8-sig": "utf-8",
    "gbk": "gb18030", "gb2312": "gb18030", "gb18030": "gb18030", "cp936": "gb18030",
}
DETECT_ORDER = ("utf-8", "gb18030")
UTF8_BOM = codecs.BOM_UTF8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

COMPRESSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "zip"), (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"7z\xbc\xaf\x27\x1c", "7z"),
)
COMPRESSED_SUFFIXES = (".gz", ".zip", ".bz2", ".xz", ".zst", ".7z", ".tgz", ".rar")
PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")


def _no_progress(_stage: str, _fraction: float) -> None:
    return None


def check_filename(filename: str | None) -> str:
    """The client's file name, used only to tell the format: never as a path."""
    name = (filename or "").strip()
    if not name:
        return "upload"
    if (len(name) > MAX_FILENAME or "/" in name or "\\" in name or "\x00" in name
            or name in (".", "..") or name.startswith("..") or any(ord(ch) < 32 for ch in name)):
        raise bad_request("The file name must be a plain name, without directories.")
    if name.lower().endswith(COMPRESSED_SUFFIXES):
        raise bad_request("Compressed files are not accepted: upload the CSV or Parquet file itself.")
    return name


def save_upload(stream: BinaryIO, dest: Path, limit: int,
                progress: Progress = _no_progress, expected: int | None = None) -> int:
    """Copy ``stream`` to ``dest`` (owner-only) chunk by chunk; 413 beyond ``limit`` bytes."""
    written = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > limit:
                raise too_large(limit)
            out.write(chunk)
            if expected:
                progress("receive", min(written / expected, 1.0))
    return written


class LimitedWriter:
    """A file that refuses to grow beyond ``limit`` bytes (for multipart stream factories)."""

    def __init__(self, path: Path, limit: int):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "w+b")
        self.limit = limit
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise too_large(self.limit)
        return self._file.write(data)

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def sniff_format(path: Path, filename: str) -> str:
    """``"csv"`` or ``"parquet"`` from the file's first bytes (and its name's suffix)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise FileRejected("not_empty", "The file is empty.")
    for magic, kind in COMPRESSED_MAGIC:
        if head.startswith(magic):
            raise FileRejected(
                "format", f"The file is {kind}-compressed; compressed files are not accepted: "
                "upload the CSV or Parquet file itself."
            )
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if filename.lower().endswith(PARQUET_SUFFIXES):
        raise FileRejected("format", "The file is named as Parquet but is not a Parquet file.")
    return "csv"


@dataclass(frozen=True)
class CsvFile:
    path: Path  # UTF-8, "<line number>,<original record>" per data record, no header
    header: list[str]
    rows: int
    encoding: str
    multiline: bool = False  # some quoted field holds a line break


# A line whose quotes (doubled ones removed) only open and close whole fields: it ends
# outside quotes. Checked at C speed; anything else goes through the exact state machine.
_PLAIN_QUOTED_LINE = re.compile(rb'(?:"[^"]*"|[^",]*)(?:,(?:"[^"]*"|[^",]*))*\r?')
_QUOTED_CONTENT = re.compile(rb'(?:[^"]|"")*')


def _ends_in_quotes(line: bytes, in_quotes: bool) -> bool:
    """Whether a CSV record is still inside a quoted field at the end of ``line``.

    RFC 4180, as Spark's parser reads it: a quote opens a quoted field only at the start of
    a field; inside one, a doubled quote is a quote and a single one closes the field. A
    quote inside an unquoted field (``12" screen``) is an ordinary character.
    """
    if b'"' not in line:
        return in_quotes
    if not in_quotes and _PLAIN_QUOTED_LINE.fullmatch(line.replace(b'""', b"")):
        return False
    pos, end = 0, len(line)
    while True:
        if in_quotes:
            pos = _QUOTED_CONTENT.match(line, pos).end()
            if pos >= end:
                return True
            in_quotes = False  # the closing quote; what follows up to the comma is text
            pos += 1
        elif line.startswith(b'"', pos):
            in_quotes = True
            pos += 1
            continue
        comma = line.find(b",", pos)
        if comma < 0:
            return False
        pos = comma + 1


class _Undecodable(Exception):
    def __init__(self, line: int):
        super().__init__(line)
        self.line = line


def codec_for(declared: str | None) -> str | None:
    """The codec of a declared encoding (None: detect); 400 for an unknown name."""
    if declared is None or declared.strip().lower() in ("", "auto"):
        return None
    codec = ENCODINGS.get(declared.strip().lower())
    if codec is None:
        raise bad_request("Unknown encoding; use utf-8, gbk, gb18030 or auto.")
    return codec


def normalise_csv(src: Path, dest: Path, declared: str | None = None, *,
                  max_line_bytes: int = MAX_LINE_BYTES,
                  progress: Progress = _no_progress) -> CsvFile:
    """Check the text encoding and record lengths, and write the numbered UTF-8 copy."""
    codec = codec_for(declared)
    with open(src, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise FileRejected("not_empty", "The file is empty.")
    if head.startswith(UTF16_BOMS):
        raise FileRejected("encoding", "The file is UTF-16; save it as UTF-8 or GBK and upload again.",
                           first_rows=(1,))
    has_bom = head.startswith(UTF8_BOM)
    if has_bom and codec not in (None, "utf-8"):
        raise FileRejected("encoding", "The file starts with a UTF-8 mark but was declared "
                           "as another encoding.", first_rows=(1,))
    candidates = ("utf-8",) if has_bom else ((codec,) if codec else DETECT_ORDER)
    first_bad: int | None = None
    for candidate in candidates:
        try:
            return _rewrite(src, dest, candidate, has_bom, max_line_bytes, progress)
        except _Undecodable as exc:
            first_bad = exc.line if first_bad is None else first_bad
    names = "UTF-8" if len(candidates) == 1 and candidates[0] == "utf-8" else (
        "GBK/GB18030" if candidates == ("gb18030",) else "UTF-8 or GBK/GB18030")
    raise FileRejected("encoding", f"The file is not valid {names} text.",
                       first_rows=(first_bad,) if first_bad else ())


def _parse_header(raw: bytes, line: int) -> list[str]:
    text = raw.decode("utf-8").rstrip("\r")
    if not text.strip():
        raise FileRejected("header", "The first line must be the header naming the columns.",
                           first_rows=(line,))
    try:
        names = next(csv.reader([text], strict=True))
    except csv.Error:
        raise FileRejected("header", "The header line is not well-formed CSV.",
                           first_rows=(line,)) from None
    return [n.strip() for n in names]


def _rewrite(src: Path, dest: Path, codec: str, skip_bom: bool, max_line_bytes: int,
             progress: Progress) -> CsvFile:
    total = max(src.stat().st_size, 1)
    decoder = codecs.getincrementaldecoder(codec)("strict")
    done_lines = 0  # lines completed before ``pending``
    pending = b""
    header: list[str] | None = None
    rows = 0
    consumed = 0

    record: list[bytes] = []  # the lines of the record being read
    # the record's first line and size so far; inside quotes at its end; any record multi-line
    state = {"line": 0, "bytes": 0, "open": False, "multiline": False}

    def write(numbered: list[bytes], out: BinaryIO) -> None:
        nonlocal rows
        if numbered:
            out.write(b"\n".join(numbered))
            out.write(b"\n")
            rows += len(numbered)

    def emit(lines: list[bytes], out: BinaryIO, quoted: bool = True) -> None:
        nonlocal header, done_lines
        if not quoted and not record and header is not None:
            # The common case: no quote in these lines, so each line is one record.
            longest = max(map(len, lines))
            if longest > max_line_bytes:
                at = next(i for i, ln in enumerate(lines) if len(ln) > max_line_bytes)
                raise FileRejected("line_length", f"A line is longer than {max_line_bytes} bytes.",
                                   first_rows=(done_lines + 1 + at,))
            write([b"%d,%b" % (n, ln.rstrip(b"\r"))
                   for n, ln in enumerate(lines, done_lines + 1) if ln.strip()], out)
            done_lines += len(lines)
            return
        numbered = []
        for offset, ln in enumerate(lines):
            number = done_lines + 1 + offset
            if len(ln) > max_line_bytes:
                raise FileRejected("line_length", f"A line is longer than {max_line_bytes} bytes.",
                                   first_rows=(number,))
            if not record:
                state["line"], state["bytes"] = number, 0
            state["bytes"] += len(ln) + 1
            if state["bytes"] > max_line_bytes + 1:
                raise FileRejected("line_length", f"A record is longer than {max_line_bytes} bytes.",
                                   first_rows=(state["line"],))
            record.append(ln)
            state["open"] = _ends_in_quotes(ln, state["open"])
            if state["open"]:
                continue  # a quoted field goes on on the next line
            if len(record) > 1:
                state["multiline"] = True
            text = b"\n".join(record)
            record.clear()
            if header is None:
                header = _parse_header(text, state["line"])
                continue
            # Blank lines are skipped (as Spark would); each record keeps its line number.
            text = text.rstrip(b"\r")
            if text.strip():
                numbered.append(b"%d,%b" % (state["line"], text))
        write(numbered, out)
        done_lines += len(lines)

    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as out:
        if skip_bom:
            fin.read(len(UTF8_BOM))
        while True:
            chunk = fin.read(CHUNK)
            final = not chunk
            nul = chunk.find(b"\x00")
            if nul >= 0:
                line = done_lines + 1 + pending.count(b"\n") + chunk[:nul].count(b"\n")
                raise FileRejected("encoding", "The file holds NUL bytes: it is not a text CSV.",
                                   first_rows=(line,))
            try:
                text = decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                raise _Undecodable(done_lines + 1 + chunk[: max(exc.start, 0)].count(b"\n")) from None
            data = chunk if codec == "utf-8" else text.encode("utf-8")
            buffer = pending + data
            lines = buffer.split(b"\n")
            pending = lines.pop()
            if len(pending) > max_line_bytes:
                raise FileRejected("line_length", f"A line is longer than {max_line_bytes} bytes.",
                                   first_rows=(done_lines + len(lines) + 1,))
            if lines:
                emit(lines, out, quoted=b'"' in buffer)
            consumed += len(chunk)
            progress("read", min(consumed / total, 1.0))
            if final:
                break
        if pending:
            emit([pending], out)
    if record:
        raise FileRejected("well_formed", "A quoted field is not closed before the end of the file.",
                           first_rows=(state["line"],))
    if header is None:
        raise FileRejected("not_empty", "The file is empty.")
    if rows == 0:
        raise FileRejected("not_empty", "The file has a header but no data rows.")
    return CsvFile(dest, header, rows, codec, state["multiline"])
