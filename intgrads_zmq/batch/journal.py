"""``rows.jsonl``: the run's journal, appended to and never rewritten in place.

Why it is safe to kill the runner at any moment: each batch of rows is one
``write`` of whole lines to a file opened with ``O_APPEND``, followed by
``fsync``. A crash can therefore only leave the *last* line incomplete (no
newline, or bytes that do not parse: a filesystem may zero-fill what it had
not flushed). :func:`recover` finds such a tail, truncates the file back to
the last whole line and says how many bytes it dropped; a bad line *before*
good ones is not a torn write and is reported, never silently discarded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class JournalCorrupt(RuntimeError):
    """A line in the middle of the journal is not a row: not a torn write."""


@dataclass
class Recovered:
    """The rows of a journal, and what had to be dropped from its tail."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    dropped_bytes: int = 0
    dropped_lines: int = 0


def encode_row(row: dict[str, Any]) -> bytes:
    """One row as one line: compact JSON (NaN is refused: the output is strict JSON)."""
    return json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return None
    return row if isinstance(row, dict) and "id" in row else None


def recover(path: Path) -> Recovered:
    """Read ``path`` (missing: empty), dropping a torn tail from the file itself."""
    path = Path(path)
    if not path.exists():
        return Recovered()
    data = path.read_bytes()
    result = Recovered()
    good_end = 0          # bytes up to the end of the last whole, valid line
    position = 0
    bad: list[int] = []   # line numbers of invalid complete lines seen since good_end
    number = 0
    while position < len(data):
        end = data.find(b"\n", position)
        number += 1
        if end < 0:  # no newline: the write was cut short
            break
        line = data[position:end]
        row = _parse(line) if line.strip() else None
        if row is not None:
            if bad:
                raise JournalCorrupt(f"{path}: line {bad[0]} is not a row but line {number} after it is; "
                                     "this is not a torn write (was the file edited?); fix or remove it")
            result.rows.append(row)
            good_end = end + 1
        elif line.strip():
            bad.append(number)
        position = end + 1
    if good_end < len(data):
        tail = data[good_end:]
        result.dropped_bytes = len(tail)
        result.dropped_lines = tail.count(b"\n") + (0 if tail.endswith(b"\n") else 1)
        with path.open("r+b") as stream:
            stream.truncate(good_end)
            stream.flush()
            os.fsync(stream.fileno())
    return result


class Journal:
    """Appends rows durably: one write per batch of whole lines, then fsync."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        data = b"".join(encode_row(row) for row in rows)
        view = memoryview(data)
        while view:  # a short write (disk full) leaves a torn tail that recover() drops
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rewrite(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the journal's content atomically (temp file, fsync, rename)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as stream:
        for row in rows:
            stream.write(encode_row(row))
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
