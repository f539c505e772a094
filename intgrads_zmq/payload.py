"""A computed attribution as plain data: metadata plus raw tensor buffers.

This is what a worker's reply becomes once it is off the wire, and what the
response encoders consume. It holds bytes, not torch tensors, so the HTTP
frontend never needs torch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

# numpy-style dtype names that may appear on the wire, with their item sizes
# and the struct/memoryview format letter used to read them without numpy.
DTYPES: dict[str, tuple[int, str]] = {
    "float32": (4, "f"),
    "float64": (8, "d"),
    "float16": (2, "e"),
    "int64": (8, "q"),
    "int32": (4, "i"),
    "uint8": (1, "B"),
    "bool": (1, "?"),
}


@dataclass(frozen=True)
class RawTensor:
    """A C-contiguous little-endian tensor as bytes with its dtype and shape."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes | bytearray | memoryview

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}")
        if any((not isinstance(n, int)) or n < 0 for n in self.shape):
            raise ValueError(f"bad shape {self.shape!r}")
        if len(memoryview(self.data).cast("B")) != self.nbytes:
            raise ValueError(
                f"tensor data is {len(memoryview(self.data).cast('B'))} bytes, "
                f"expected {self.nbytes} for {self.dtype}{list(self.shape)}"
            )

    @property
    def numel(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][0]

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def tolist(self) -> Any:
        """Nested Python lists (pure Python; slow for big tensors, by design rare)."""
        if self.numel == 0:
            return _empty_nested(self.shape)
        raw = memoryview(self.data).cast("B")
        if self.dtype == "float16":  # memoryview cannot cast to half floats
            flat = list(struct.unpack(f"<{self.numel}e", raw))
            return flat[0] if not self.shape else _nest(flat, self.shape)
        view = raw.cast(DTYPES[self.dtype][1])
        if not self.shape:
            return view[0]
        return raw.cast(DTYPES[self.dtype][1], list(self.shape)).tolist()


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0]
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _empty_nested(shape: tuple[int, ...]) -> Any:
    if shape[0] == 0 or len(shape) == 1:
        return [] if shape[0] == 0 else [[] for _ in range(shape[0])]
    return [_empty_nested(shape[1:]) for _ in range(shape[0])]


@dataclass
class AttributionPayload:
    """One sequence's result: JSON-able metadata plus named raw tensors.

    ``meta`` keys (all plain JSON values): ``model``, ``tokens`` (list[str]),
    ``labels`` (list[str]), ``probabilities`` (list[float]), ``target`` (int),
    ``target_label`` (str), ``f_input``, ``f_baseline``,
    ``completeness_error`` (floats), ``truncated`` (bool), ``n_steps``,
    ``method``, ``baseline``, ``seed``, ``dtype``, ``attributions`` (per-token
    sums over the hidden dimension), ``alphas`` and ``path_integrand`` (one
    float per step) and ``timings``. ``tensors`` holds those of
    ``integrated_gradients``, ``intermediate_gradients``, ``step_sizes``,
    ``intermediates`` that were asked for.
    """

    meta: dict[str, Any]
    tensors: dict[str, RawTensor] = field(default_factory=dict)
