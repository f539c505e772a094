"""gzip that stores big tensor buffers verbatim and compresses the rest.

float32 gradients and path points barely compress (isal's fastest level
saves about 4%, gzip -9 about 5%), yet deflating 20 MB of them costs 40 ms at
isal level 1 and 3 s at level 9: most of the HTTP overhead of a reply. A
deflate stream may mix block types, so big buffers go out as stored blocks
(a copy and a CRC, about 2.5x faster than isal level 1) while small pieces
(zip and pickle headers, metadata) are compressed at isal level 1 and flushed
to a byte boundary first. Any gzip reader decodes the result.

Because a stored block's size is known in advance and the small pieces are
compressed while planning, the whole member's length is known before its
first byte is sent: :func:`plan_gzip` returns it with a generator of the
member's pieces, which reference the big buffers instead of copying them
(the frontend streams a reply of hundreds of MB with a Content-Length).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

try:
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - exercised only where isal is missing
    _deflate = None

STORE_AT = 64 << 10  # buffers at least this big are stored, not compressed
LEVEL = 1  # for the small pieces
_MAX_STORED = 0xFFFF  # a stored block holds at most 65535 bytes
_STORED_HEADER = 5  # BFINAL/BTYPE byte, LEN, NLEN
_CRC_SLICE = 8 << 20  # CRC big buffers in slices (isal and zlib release the GIL per call)
# magic, deflate, no flags, no mtime, no extra flags, unknown OS
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_FINAL_EMPTY_BLOCK = b"\x01\x00\x00\xff\xff"
_TRAILER = 8  # CRC32, ISIZE


def _crc32(data: memoryview, crc: int) -> int:
    crc32 = _deflate.crc32 if _deflate is not None else zlib.crc32
    for start in range(0, len(data), _CRC_SLICE):
        crc = crc32(data[start : start + _CRC_SLICE], crc)
    return crc


def _compressor():
    module = _deflate if _deflate is not None else zlib
    return module.compressobj(LEVEL, module.DEFLATED, -15), module.Z_FULL_FLUSH


def stored_size(length: int) -> int:
    """Bytes that ``length`` bytes take as stored deflate blocks."""
    return length + _STORED_HEADER * -(-length // _MAX_STORED)


def _stored_blocks(view: memoryview) -> Iterator[bytes | memoryview]:
    for start in range(0, len(view), _MAX_STORED):
        block = view[start : start + _MAX_STORED]
        yield struct.pack("<BHH", 0, len(block), len(block) ^ 0xFFFF)
        yield block


@dataclass(frozen=True)
class GzipPlan:
    """A gzip member, planned: its exact length and how to produce it.

    ``segments`` are compressed bytes (small pieces, already deflated) or
    memoryviews of big buffers still to be written as stored blocks.
    """

    segments: tuple[bytes | memoryview, ...]
    stored: tuple[bool, ...]
    crc: int
    size: int  # uncompressed bytes

    @property
    def length(self) -> int:
        body = sum(stored_size(len(s)) if big else len(s) for s, big in zip(self.segments, self.stored, strict=True))
        return len(_HEADER) + body + len(_FINAL_EMPTY_BLOCK) + _TRAILER

    def pieces(self) -> Iterator[bytes | memoryview]:
        """The member, in order; big buffers are referenced, not copied."""
        yield _HEADER
        for segment, big in zip(self.segments, self.stored, strict=True):
            if big:
                yield from _stored_blocks(segment)  # type: ignore[arg-type]
            else:
                yield segment
        yield _FINAL_EMPTY_BLOCK
        yield struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF)


def plan_gzip(chunks: Iterable[bytes | bytearray | memoryview]) -> GzipPlan:
    """Plan one gzip member holding the concatenation of ``chunks``.

    Small chunks are compressed now (they are small); big ones are only
    referenced, and checksummed, so nothing big is copied.
    """
    compressor, full_flush = _compressor()
    segments: list[bytes | memoryview] = []
    stored: list[bool] = []
    pending: list[bytes] = []
    crc, size = 0, 0

    def flush_pending() -> None:
        # byte-align and cut back-references before raw bytes
        pending.append(compressor.flush(full_flush))
        segments.append(b"".join(pending))
        stored.append(False)
        pending.clear()

    compressing = False
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        crc, size = _crc32(view, crc), size + len(view)
        if len(view) >= STORE_AT:
            if compressing:
                flush_pending()
                compressing = False
            segments.append(view)
            stored.append(True)
        elif view:
            pending.append(compressor.compress(view))
            compressing = True
    if compressing:
        flush_pending()
    return GzipPlan(tuple(segments), tuple(stored), crc, size)


def gzip_chunks(chunks: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """One gzip member holding the concatenation of ``chunks``, as one bytes
    object (for small bodies and tests; replies stream :func:`plan_gzip`)."""
    return b"".join(plan_gzip(chunks).pieces())
