"""A computed attribution as plain data: metadata plus raw tensor buffers.

This is what a worker's reply becomes once it is off the wire, and what the
response encoders consume. It holds bytes, not torch tensors, so the HTTP
frontend never needs torch.
"""

from __future__ import annotations

import struct
import sys
from array import array
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
        """Nested lists of Python numbers, built in C by memoryview where it can.

        Used by the JSON encoder and by clients without torch or numpy.
        """
        if self.numel == 0:
            return _empty_nested(self.shape)
        code = DTYPES[self.dtype][1]
        view = memoryview(self.data).cast("B")
        if self.dtype == "float16":
            # memoryview cannot view half floats; every float16 is exact as float32.
            values = array("f", struct.unpack(f"<{self.numel}e", view))
            view, code = memoryview(values).cast("B"), "f"
        elif self.itemsize > 1 and sys.byteorder != "little":  # pragma: no cover
            values = array(code)  # the wire is little-endian
            values.frombytes(view)
            values.byteswap()
            view = memoryview(values).cast("B")
        if not self.shape:
            return view.cast(code)[0]
        return view.cast(code, list(self.shape)).tolist()


def _empty_nested(shape: tuple[int, ...]) -> list[Any]:
    return [] if shape[0] == 0 else [_empty_nested(shape[1:]) for _ in range(shape[0])]


@dataclass
class AttributionPayload:
    """One sequence's result: JSON-able metadata plus named raw tensors.

    ``meta`` keys (all plain JSON values): ``model``, ``tokens`` (list[str]),
    ``labels`` (list[str]), ``probabilities`` (list[float]), ``predicted``
    (int) and ``predicted_label``, ``target`` (int), ``target_label`` (str),
    ``f_input``, ``f_baseline``, ``attribution_sum``, ``completeness_error``
    (floats), ``truncated`` (bool), ``n_steps``, ``method``, ``baseline``,
    ``seed``, ``dtype``, ``aggregate``, ``attributions`` (per-token sums over
    the hidden dimension), ``alphas`` and ``path_integrand`` (one float per
    step) and ``timings``. With a contrast: ``contrast`` (int) and
    ``contrast_label``, and F(x), F(x') are logit[target] - logit[contrast].
    With ``target: "all"`` every class-dependent value is a list in class
    order (``target``, ``target_label``, ``f_input``, ``f_baseline``,
    ``attribution_sum``, ``completeness_error``,
    ``relative_completeness_error``, ``attributions``, ``path_integrand``,
    and for ``n_steps: "auto"`` ``error_estimate`` and ``completeness``).
    Optional: ``words``, ``word_attributions``, ``word_spans``
    (``aggregate: "words"``) and ``metrics`` (faithfulness). ``tensors``
    holds those of ``integrated_gradients`` (1, T, H; C, 1, T, H for "all"),
    ``intermediate_gradients`` (n, T, H; C, n, T, H for "all"),
    ``step_sizes`` (n, 1) and ``intermediates`` (n, T, H) that were asked for.
    """

    meta: dict[str, Any]
    tensors: dict[str, RawTensor] = field(default_factory=dict)
