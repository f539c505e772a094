"""Write the safetensors format by hand, so the frontend needs no tensor library.

Layout: an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and ``data_offsets`` (relative to the end of the header)
plus an optional ``__metadata__`` map of strings, padded with spaces to a
multiple of 8, then the raw little-endian tensor bytes back to back.
"""

from __future__ import annotations

import json
import struct

from intgrads_zmq.payload import RawTensor

__all__ = ["SAFETENSORS_DTYPES", "safetensors_parts", "write_safetensors"]

SAFETENSORS_DTYPES: dict[str, str] = {
    "float32": "F32",
    "float64": "F64",
    "float16": "F16",
    "int64": "I64",
    "int32": "I32",
    "uint8": "U8",
    "bool": "BOOL",
}


def write_safetensors(tensors: dict[str, RawTensor], metadata: dict[str, str]) -> bytes:
    """Serialize ``tensors`` with string ``metadata`` (omitted when empty), as one bytes object."""
    return b"".join(safetensors_parts(tensors, metadata))


def safetensors_parts(tensors: dict[str, RawTensor], metadata: dict[str, str]) -> list[bytes | memoryview]:
    """The file as buffers in order: the length, the header, then each tensor's
    data, referenced rather than copied (a reply is streamed from these).

    Data is laid out widest item size first, so every tensor starts aligned to
    its own item size (the header is padded to 8) and readers may view it
    without copying; the header keeps the caller's key order.
    """
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("safetensors metadata must map str to str")
    if "__metadata__" in tensors:
        raise ValueError("'__metadata__' is reserved and cannot name a tensor")

    order = sorted(tensors, key=lambda name: -tensors[name].itemsize)  # stable
    offsets: dict[str, list[int]] = {}
    position = 0
    for name in order:
        end = position + tensors[name].nbytes
        offsets[name] = [position, end]
        position = end

    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name, tensor in tensors.items():
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": offsets[name],
        }
    text = json.dumps(header, separators=(",", ":")).encode("ascii")
    text += b" " * (-len(text) % 8)
    parts: list[bytes | memoryview] = [struct.pack("<Q", len(text)), text]
    parts.extend(memoryview(tensors[name].data).cast("B") for name in order)
    return parts
