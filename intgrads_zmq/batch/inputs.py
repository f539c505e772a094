"""Read the examples of an input file: JSONL, CSV/TSV, or one text per line.

The whole file is read and checked before any request is sent, so a broken
file fails at once with the line at fault instead of after an hour of work,
and the runner knows the total for its ETA. Every example gets a stable id
(the ``--id-field`` value, or its line / row number) because resuming a run
means skipping the ids already written.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("jsonl", "csv", "tsv", "txt")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}


class InputError(ValueError):
    """The input file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One text to explain. ``line`` is where it starts in the file (for messages)."""

    id: int | str
    text: str
    label: int | str | None
    line: int

    @property
    def key(self) -> str:
        """The id as the journal compares it (ids of one file are all ints or all strings)."""
        return id_key(self.id)


def id_key(value: Any) -> str:
    """How ids are compared between the input and the rows already written."""
    return str(value)


def detect_format(path: Path, given: str | None = None) -> str:
    """``given`` if set, else the format the file's extension names."""
    if given:
        if given not in FORMATS:
            raise InputError(f"unknown input format {given!r}; one of {', '.join(FORMATS)}")
        return given
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: cannot tell the format from the extension {path.suffix!r} "
                         f"(known: {', '.join(sorted(EXTENSIONS))}); pass --input-format")
    return fmt


def read_examples(path: Path, *, fmt: str | None = None, text_field: str = "text",
                  label_field: str | None = None, id_field: str | None = None) -> list[Example]:
    """Every example of ``path``, checked: texts are strings, ids unique.

    Blank lines of JSONL and text files are skipped (ids stay line numbers).
    Raises :class:`InputError` naming the file and line of the first problem.
    """
    path = Path(path)
    fmt = detect_format(path, fmt)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if fmt == "txt" and (label_field or id_field):
        raise InputError(f"{path}: a text file has one text per line and no fields; "
                         "--label-field and --id-field need JSONL or CSV")
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            if fmt == "jsonl":
                examples = list(_jsonl(path, stream, text_field, label_field, id_field))
            elif fmt == "txt":
                examples = list(_txt(stream))
            else:
                examples = list(_csv(path, stream, "\t" if fmt == "tsv" else ",",
                                     text_field, label_field, id_field))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not examples:
        raise InputError(f"{path}: no examples in the file")
    _check_unique(path, examples)
    return examples


def _jsonl(path: Path, lines: Iterable[str], text_field: str, label_field: str | None,
           id_field: str | None) -> Iterator[Example]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if text_field not in record:
            raise InputError(f"{where}: no field {text_field!r} (fields: {', '.join(record) or 'none'}); "
                             "choose one with --text-field")
        text = record[text_field]
        if not isinstance(text, str):
            raise InputError(f"{where}: field {text_field!r} must be a string, got {_kind(text)}")
        label = _value(where, record, label_field, "label") if label_field else None
        ident = _value(where, record, id_field, "id") if id_field else number
        if id_field and ident is None:
            raise InputError(f"{where}: no value for the id field {id_field!r}")
        yield Example(ident, text, label, number)


def _value(where: str, record: dict[str, Any], field: str, role: str) -> int | str | None:
    """A label or id from a JSON record: a string or an integer (a missing label is None)."""
    if field not in record or record[field] is None:
        if role == "id":
            raise InputError(f"{where}: no value for the id field {field!r}")
        return None
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise InputError(f"{where}: the {role} field {field!r} must be a non-empty string or an "
                         f"integer, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _txt(lines: Iterable[str]) -> Iterator[Example]:
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield Example(number, text, None, number)


def _csv(path: Path, stream: Any, delimiter: str, text_field: str, label_field: str | None,
         id_field: str | None) -> Iterator[Example]:
    reader = csv.DictReader(stream, delimiter=delimiter)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise InputError(f"{path}:1: unreadable header ({exc})") from None
    if not header:
        raise InputError(f"{path}: empty file (a header row naming the columns comes first)")
    for role, field in (("text", text_field), ("label", label_field), ("id", id_field)):
        if field is not None and field not in header:
            raise InputError(f"{path}: no column {field!r} for the {role} (columns: {', '.join(header)})")
    row_number = 0
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}:{start}: {exc}") from None
        row_number += 1
        where = f"{path}:{start}"
        text = record.get(text_field)
        if text is None:
            raise InputError(f"{where}: row {row_number} has no value for {text_field!r} (too few columns)")
        label = record.get(label_field) if label_field else None
        ident: int | str = row_number
        if id_field:
            ident = record.get(id_field) or ""
            if not ident:
                raise InputError(f"{where}: row {row_number} has no value for the id column {id_field!r}")
        yield Example(ident, text, label or None, start)


def _check_unique(path: Path, examples: list[Example]) -> None:
    seen: dict[str, int] = {}
    for example in examples:
        first = seen.setdefault(example.key, example.line)
        if first != example.line:
            raise InputError(f"{path}:{example.line}: id {example.id!r} is used twice "
                             f"(first on line {first}); ids must be unique to resume a run")
