"""Reply bodies as a stream of modest ``bytes`` pieces.

A tensor reply can approach a gigabyte. Joining it into one ``bytes`` object
doubles the frontend's memory for the length of the transfer (the received
frames plus the joined copy), and a WSGI server writes only ``bytes``. So the
encoders describe a body as buffers that reference the received tensor
frames, and :func:`rechunk` turns those into pieces of about
:data:`CHUNK_BYTES`, each copied once, just before the server writes it.

The piece size stays below the frontend's fixed 1 MiB mmap threshold
(``service.tuning.map_large_blocks``), so the pieces come from, and go back
to, the thread's heap instead of costing a fresh mapping each.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

CHUNK_BYTES = 512 << 10

Buffer = bytes | bytearray | memoryview


def rechunk(pieces: Iterable[Buffer], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The concatenation of ``pieces`` as ``bytes`` of ``size`` (the last one
    shorter); empty pieces vanish, nothing is yielded for an empty body."""
    if size <= 0:
        raise ValueError("size must be positive")
    parts: list[memoryview] = []
    held = 0
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while len(view):
            take = view[: size - held]
            parts.append(take)
            held += len(take)
            view = view[len(take) :]
            if held == size:
                yield b"".join(parts)
                parts.clear()
                held = 0
    if held:
        yield b"".join(parts)


def total_length(pieces: Iterable[Buffer]) -> int:
    """The byte length of the concatenation of ``pieces``."""
    return sum(memoryview(piece).nbytes for piece in pieces)
