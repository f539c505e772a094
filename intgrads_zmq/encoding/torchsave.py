"""Write ``torch.save``'s zip format without importing torch.

The HTTP frontend must answer the original server's contract (a gzip'd
``torch.save`` dict) while never importing torch, so this module emits the
protocol-2 pickle opcodes and the zip container itself. The layout mirrors the
writer inside torch (miniz): records start 64-byte aligned thanks to an ``FB``
padding extra field, every non-empty record is followed by a data descriptor,
and storages are stored consecutively in key order. Keeping that layout means
torch's own offset arithmetic (``mmap=True`` and meta-device loading) also
finds our storages, not only the central directory.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Any

from intgrads_zmq.payload import RawTensor

try:  # isal's crc32 is several times faster than zlib's on big buffers
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a declared dependency
    _crc32 = zlib.crc32

__all__ = ["STORAGE_TYPES", "torch_save_chunks", "write_torch_save"]

# Tensor dtype -> the legacy typed-storage class named in the persistent id.
STORAGE_TYPES: dict[str, str] = {
    "float32": "FloatStorage",
    "float64": "DoubleStorage",
    "float16": "HalfStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}

ARCHIVE_NAME = "archive"  # what torch names the top folder when saving to a buffer
ALIGNMENT = 64
# A size or offset at or above this needs zip64 fields. A module global so that
# tests can lower it to exercise the zip64 paths without writing 4 GiB.
ZIP64_LIMIT = 0xFFFFFFFF

# Pickle opcodes (protocol 2 subset that torch's weights_only unpickler reads).
_PROTO2 = b"\x80\x02"
_STOP = b"."
_MARK = b"("
_NONE = b"N"
_TRUE = b"\x88"
_FALSE = b"\x89"
_EMPTY_DICT = b"}"
_EMPTY_LIST = b"]"
_EMPTY_TUPLE = b")"
_SETITEMS = b"u"
_APPENDS = b"e"
_TUPLE = b"t"
_TUPLE_N = {1: b"\x85", 2: b"\x86", 3: b"\x87"}
_REDUCE = b"R"
_BINPERSID = b"Q"
_BATCH = 1000  # items per MARK ... SETITEMS/APPENDS run, as pickle does


class _Pickler:
    """Emits the pickle of a plain-data tree whose leaves may be RawTensors.

    Tensors become ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride,
    False, OrderedDict())`` with the storage as a persistent id, exactly the
    shape torch.save gives them, so ``torch.load(weights_only=True)`` accepts it.
    """

    def __init__(self) -> None:
        self.out = bytearray(_PROTO2)
        self.storages: list[memoryview] = []
        self._memo: dict[tuple[str, str], int] = {}

    def dump(self, obj: Any) -> bytes:
        self._save(obj)
        self.out += _STOP
        return bytes(self.out)

    def _save(self, obj: Any) -> None:
        # bool before int: bool is an int subclass.
        if obj is None:
            self.out += _NONE
        elif obj is True:
            self.out += _TRUE
        elif obj is False:
            self.out += _FALSE
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, float):
            self.out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):
            self._str(obj)
        elif isinstance(obj, RawTensor):
            self._tensor(obj)
        elif isinstance(obj, dict):
            self._dict(obj)
        elif isinstance(obj, list):
            self._list(obj)
        elif isinstance(obj, tuple):
            self._tuple(obj)
        else:
            raise TypeError(f"cannot write {type(obj).__name__} in a torch.save archive")

    def _int(self, value: int) -> None:
        if 0 <= value < 0x100:
            self.out += b"K" + bytes((value,))
        elif 0 <= value < 0x10000:
            self.out += b"M" + struct.pack("<H", value)
        elif -0x80000000 <= value < 0x80000000:
            self.out += b"J" + struct.pack("<i", value)
        else:
            size = (value.bit_length() >> 3) + 1  # room for the sign bit
            if size > 255:
                raise ValueError("integer too large for LONG1")
            self.out += b"\x8a" + bytes((size,)) + value.to_bytes(size, "little", signed=True)

    def _str(self, value: str) -> None:
        data = value.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(data)) + data

    def _global(self, module: str, name: str) -> None:
        """GLOBAL once, then fetch it from the memo (keeps pickles of many tensors small)."""
        index = self._memo.get((module, name))
        if index is not None:
            self.out += _memo_op(b"h", b"j", index)
            return
        index = len(self._memo)
        self._memo[(module, name)] = index
        self.out += b"c" + f"{module}\n{name}\n".encode("ascii")
        self.out += _memo_op(b"q", b"r", index)

    def _dict(self, obj: dict[Any, Any]) -> None:
        self.out += _EMPTY_DICT
        items = list(obj.items())
        for start in range(0, len(items), _BATCH):
            self.out += _MARK
            for key, value in items[start : start + _BATCH]:
                self._save(key)
                self._save(value)
            self.out += _SETITEMS

    def _list(self, obj: list[Any]) -> None:
        self.out += _EMPTY_LIST
        for start in range(0, len(obj), _BATCH):
            self.out += _MARK
            for value in obj[start : start + _BATCH]:
                self._save(value)
            self.out += _APPENDS

    def _tuple(self, obj: tuple[Any, ...]) -> None:
        if not obj:
            self.out += _EMPTY_TUPLE
            return
        short = _TUPLE_N.get(len(obj))
        if short is None:
            self.out += _MARK
        for value in obj:
            self._save(value)
        self.out += short if short is not None else _TUPLE

    def _tensor(self, tensor: RawTensor) -> None:
        key = str(len(self.storages))
        self.storages.append(memoryview(tensor.data).cast("B"))
        self._global("torch._utils", "_rebuild_tensor_v2")
        self.out += _MARK
        # persistent id: ('storage', torch.<X>Storage, key, 'cpu', numel)
        self.out += _MARK
        self._str("storage")
        self._global("torch", STORAGE_TYPES[tensor.dtype])
        self._str(key)
        self._str("cpu")
        self._int(tensor.numel)
        self.out += _TUPLE + _BINPERSID
        self._int(0)  # storage offset
        self._tuple(tensor.shape)
        self._tuple(_contiguous_strides(tensor.shape))
        self.out += _FALSE  # requires_grad
        self._global("collections", "OrderedDict")  # backward hooks
        self.out += _EMPTY_TUPLE + _REDUCE
        self.out += _TUPLE + _REDUCE


def _memo_op(short: bytes, long: bytes, index: int) -> bytes:
    """BINGET/BINPUT for small memo indexes, their LONG_ forms otherwise."""
    return short + bytes((index,)) if index < 0x100 else long + struct.pack("<I", index)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides as torch computes them (a size-0 dim counts as 1)."""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


_DOS_DATE = (1 << 5) | 1  # 1980-01-01, fixed so that output is deterministic
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")


class _ZipWriter:
    """An uncompressed zip built as a list of buffers, laid out like miniz's."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.chunks: list[bytes | memoryview] = []
        self.offset = 0
        self.central: list[bytes] = []
        self.names: list[str] = []
        self.crcs: list[int] = []

    def _emit(self, chunk: bytes | memoryview) -> None:
        self.chunks.append(chunk)
        self.offset += len(chunk)

    def add(self, name: str, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        size = len(view)
        crc = _crc32(view) & 0xFFFFFFFF
        full = f"{self.prefix}/{name}".encode()
        header_at = self.offset
        big_size = size >= ZIP64_LIMIT
        big_offset = header_at >= ZIP64_LIMIT
        zip64 = big_size or big_offset
        version = 45 if zip64 else 20
        # The zip64 extra field carries only the values that overflow, in the
        # order sizes then offset, both in the local and the central header.
        fields = (struct.pack("<QQ", size, size) if big_size else b"") + (
            struct.pack("<Q", header_at) if big_offset else b""
        )
        z64_extra = struct.pack("<HH", 0x0001, len(fields)) + fields if fields else b""
        data_at = header_at + 30 + len(full) + len(z64_extra) + 4
        pad = -data_at % ALIGNMENT
        extra = z64_extra + struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB" + padding
        # Bit 3: CRC and sizes follow in a data descriptor (as miniz writes them);
        # bit 11: UTF-8 names. Empty records carry their (zero) sizes inline.
        flags = 0x0808 if size else 0x0800
        header = _LOCAL_HEADER.pack(
            0x04034B50, version, flags, 0, 0, _DOS_DATE, 0, 0, 0, len(full), len(extra)
        )
        self._emit(header + full + extra)
        if size:
            self._emit(view)
            if zip64:
                self._emit(struct.pack("<IIQQ", 0x08074B50, crc, size, size))
            else:
                self._emit(struct.pack("<IIII", 0x08074B50, crc, size, size))

        size32 = 0xFFFFFFFF if big_size else size
        offset32 = 0xFFFFFFFF if big_offset else header_at
        entry = _CENTRAL_HEADER.pack(
            0x02014B50, version, version, flags, 0, 0, _DOS_DATE, crc, size32, size32,
            len(full), len(z64_extra), 0, 0, 0, 0, offset32,
        )  # fmt: skip
        self.central.append(entry + full + z64_extra)
        self.names.append(name)
        self.crcs.append(crc)

    def serialization_id(self) -> str:
        """A deterministic 40-digit id over the records so far (same form as torch's)."""
        names = hashlib.blake2b("\n".join(self.names).encode(), digest_size=8).digest()
        crcs = hashlib.blake2b(struct.pack(f"<{len(self.crcs)}I", *self.crcs), digest_size=8)
        first, second = (int.from_bytes(d, "little") for d in (names, crcs.digest()))
        return f"{first:020d}{second:020d}"

    def finish(self) -> list[bytes | memoryview]:
        """Append the central directory and (always, like torch) the zip64 end records."""
        cd_at = self.offset
        for entry in self.central:
            self._emit(entry)
        cd_size = self.offset - cd_at
        count = len(self.central)
        eocd64_at = self.offset
        self._emit(_ZIP64_END.pack(0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, cd_at))
        self._emit(_ZIP64_LOCATOR.pack(0x07064B50, 0, eocd64_at, 1))
        small_count = min(count, 0xFFFF)
        self._emit(
            _END.pack(
                0x06054B50, 0, 0, small_count, small_count,
                min(cd_size, 0xFFFFFFFF), min(cd_at, 0xFFFFFFFF), 0,
            )
        )  # fmt: skip
        return self.chunks


def torch_save_chunks(obj: Any) -> list[bytes | memoryview]:
    """The archive as buffers in order; tensor data is referenced, not copied.

    Lets a caller stream or compress a big archive without joining it first.
    """
    pickler = _Pickler()
    pickle_bytes = pickler.dump(obj)
    writer = _ZipWriter(ARCHIVE_NAME)
    writer.add("data.pkl", pickle_bytes)
    writer.add(".format_version", b"1")  # storages numbered in write order
    writer.add(".storage_alignment", str(ALIGNMENT).encode())
    writer.add("byteorder", b"little")  # RawTensor data is little-endian by contract
    for key, storage in enumerate(pickler.storages):
        writer.add(f"data/{key}", storage)
    writer.add("version", b"3\n")
    writer.add(".data/serialization_id", writer.serialization_id().encode())
    return writer.finish()


def write_torch_save(obj: Any) -> bytes:
    """What ``torch.save(obj, buffer)`` writes, for plain data and RawTensors."""
    return b"".join(torch_save_chunks(obj))
