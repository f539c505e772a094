"""Read a SentencePiece ``spiece.model`` file without the protobuf package.

transformers 5 needs ``protobuf`` to read one, which this project does not
install; the file is a small protobuf message, and only four of its fields
matter to build a tokenizer: the pieces (text, score, type), the unknown
token's id and the normalisation table.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5  # protobuf wire types
_FIXED_SIZES = {FIXED64: 8, FIXED32: 4}

# SentencePiece piece types (ModelProto.SentencePiece.Type).
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


@dataclass(frozen=True)
class Piece:
    text: str
    score: float
    kind: int


@dataclass(frozen=True)
class SentencePieceModel:
    """What a tokenizer needs from ``spiece.model``."""

    pieces: list[Piece]
    unk_id: int
    precompiled_charsmap: bytes | None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]  # IndexError on a truncated file
        result |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return result, pos
        shift += 7


def proto_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)`` for each field of one message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(data, pos)
            yield field, wire, value
            continue
        if wire == LENGTH_DELIMITED:
            size, pos = _varint(data, pos)
        elif wire in _FIXED_SIZES:
            size = _FIXED_SIZES[wire]
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, data[pos : pos + size]
        pos += size


def _last(message: bytes, field: int, wire: int) -> int | bytes | None:
    """A singular field's value (protobuf keeps the last one written), or None."""
    found = [v for f, w, v in proto_fields(message) if f == field and w == wire]
    return found[-1] if found else None


def _last_bytes(message: bytes, field: int, wire: int = LENGTH_DELIMITED) -> bytes:
    value = _last(message, field, wire)
    return value if isinstance(value, bytes) else b""


def _last_int(message: bytes, field: int, default: int) -> int:
    value = _last(message, field, VARINT)
    return value if isinstance(value, int) else default


def _piece(message: bytes) -> Piece:
    score = _last_bytes(message, 2, FIXED32) or bytes(4)
    return Piece(
        text=_last_bytes(message, 1).decode("utf-8"),
        score=struct.unpack("<f", score)[0],
        kind=_last_int(message, 3, NORMAL),
    )


def read_sentencepiece(model_file: Path) -> SentencePieceModel:
    """Pieces, unknown id and normalisation table of a ``spiece.model`` file."""
    data = model_file.read_bytes()
    pieces = [
        _piece(value)
        for field, wire, value in proto_fields(data)
        if field == 1 and wire == LENGTH_DELIMITED and isinstance(value, bytes)
    ]
    trainer_spec, normalizer_spec = _last_bytes(data, 2), _last_bytes(data, 3)
    return SentencePieceModel(
        pieces=pieces,
        unk_id=_last_int(trainer_spec, 40, 0),
        precompiled_charsmap=_last_bytes(normalizer_spec, 2) or None,
    )
