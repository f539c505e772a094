"""Response formats: pick one from the request, then encode payloads into a body.

``torch`` (the default) keeps the original server's contract: a gzip'd
``torch.save`` dict that ``gzip.open`` + ``torch.load`` reads. ``json`` suits
clients without torch; ``safetensors`` suits clients that want raw tensors
without pickle. None of this imports torch or numpy. The public names are
the ones :mod:`intgrads_zmq.encoding` re-exports.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from intgrads_zmq.encoding.gzip_stream import gzip_chunks
from intgrads_zmq.encoding.safetensors_format import write_safetensors
from intgrads_zmq.encoding.torchsave import torch_save_chunks
from intgrads_zmq.errors import BadRequest
from intgrads_zmq.options import TENSOR_FIELDS
from intgrads_zmq.payload import AttributionPayload, RawTensor


@dataclass(frozen=True, slots=True)
class Format:
    """A response format: its name, HTTP media type and download filename."""

    name: str
    media_type: str
    filename: str | None


FORMATS: dict[str, Format] = {
    "torch": Format("torch", "application/gzip", "returned_gradients.gzip"),
    "json": Format("json", "application/json", None),
    "safetensors": Format(
        "safetensors", "application/octet-stream", "returned_gradients.safetensors"
    ),
}
DEFAULT_FORMAT = "torch"

# ?format= values; "gzip" is what users of the original server call its output.
_QUERY_NAMES = {"torch": "torch", "gzip": "torch", "json": "json", "safetensors": "safetensors"}
# Accept media types we serve; wildcards mean "whatever the server prefers".
_MEDIA_TYPES = {
    "application/json": "json",
    "application/gzip": "torch",
    "application/x-gzip": "torch",
    "application/safetensors": "safetensors",
    "application/vnd.safetensors": "safetensors",
}
_WILDCARDS = frozenset({"*/*", "application/*"})

@dataclass(frozen=True, slots=True)
class EncodedBody:
    """An HTTP response body with the headers that describe it."""

    body: bytes
    media_type: str
    filename: str | None


def negotiate(query_format: str | None, accept_header: str | None) -> str:
    """Choose a format name: ``?format=`` wins, then Accept, then the default.

    Accept handling is deliberately small: media ranges are tried in q order
    (ties keep header order), ``q=0`` refuses a type, and a header naming
    nothing we serve falls back to the default rather than a 406, because
    curl-style clients of the original server never asked for anything.
    """
    if query_format is not None and query_format.strip():
        name = _QUERY_NAMES.get(query_format.strip().lower())
        if name is None:
            raise BadRequest(
                f"unknown format {query_format!r}; use one of " + ", ".join(sorted(_QUERY_NAMES)),
                field="format",
            )
        return name
    if not accept_header:
        return DEFAULT_FORMAT

    ranges = _parse_accept(accept_header)
    refused = {_MEDIA_TYPES[media] for media, q in ranges if q <= 0 and media in _MEDIA_TYPES}
    for media, q in sorted(ranges, key=lambda item: -item[1]):
        if q <= 0:
            continue
        if media in _MEDIA_TYPES and _MEDIA_TYPES[media] not in refused:
            return _MEDIA_TYPES[media]
        if media in _WILDCARDS:
            for name in FORMATS:  # the default first
                if name not in refused:
                    return name
    return DEFAULT_FORMAT


def _parse_accept(header: str) -> list[tuple[str, float]]:
    """``[(media_type, q), ...]`` in header order; a malformed q counts as 1."""
    ranges = []
    for item in header.split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 1.0
                if math.isnan(q):
                    q = 1.0
        ranges.append((media, q))
    return ranges


def encode(payloads: Sequence[AttributionPayload], fmt: str, *, batch: bool) -> EncodedBody:
    """Encode results as ``fmt``; ``batch`` wraps them as ``{"results": [...]}``.

    A non-batch body holds exactly one payload, keyed like the original server's.
    """
    spec = FORMATS.get(fmt)
    if spec is None:
        raise ValueError(f"unknown format {fmt!r}")
    if not batch and len(payloads) != 1:
        raise ValueError(f"a single-result body needs exactly one payload, got {len(payloads)}")
    if fmt == "torch":
        dicts = [_torch_dict(p) for p in payloads]
        body = gzip_chunks(torch_save_chunks({"results": dicts} if batch else dicts[0]))
    elif fmt == "json":
        objects = [_json_object(p) for p in payloads]
        text = ('{"results":[' + ",".join(objects) + "]}") if batch else objects[0]
        body = text.encode("utf-8")
    else:
        body = _safetensors_body(payloads, batch)
    return EncodedBody(body=body, media_type=spec.media_type, filename=spec.filename)


# --- torch -----------------------------------------------------------------

# Meta keys the torch dict carries, in this order, after the tensors. Timings
# and the per-step diagnostics stay out: the dict mirrors the original server's.
TORCH_META_KEYS = (
    "tokens", "labels", "probabilities", "target", "target_label", "f_input",
    "f_baseline", "completeness_error", "truncated", "attributions", "n_steps",
    "method", "baseline", "seed", "dtype", "model",
    # what n_steps "auto" did (absent for a fixed step count)
    "requested_steps", "nodes_used", "tolerance", "error_estimate", "completeness",
    "converged",
    # issue 14's options (each absent unless asked for)
    "contrast", "contrast_label", "words", "word_attributions", "word_spans", "metrics",
)  # fmt: skip


def _ordered_tensors(payload: AttributionPayload) -> dict[str, RawTensor]:
    """Known tensors in the original server's order, then any others as given."""
    ordered = {name: payload.tensors[name] for name in TENSOR_FIELDS if name in payload.tensors}
    ordered.update((k, v) for k, v in payload.tensors.items() if k not in ordered)
    return ordered


def _torch_dict(payload: AttributionPayload) -> dict[str, Any]:
    result: dict[str, Any] = dict(_ordered_tensors(payload))
    for key in TORCH_META_KEYS:
        if key in payload.meta:
            result[key] = payload.meta[key]
    return result


# --- json ------------------------------------------------------------------

_NON_FINITE = re.compile(r"NaN|-?Infinity")


def _json_object(payload: AttributionPayload) -> str:
    """All of meta plus a ``tensors`` object, as compact strict JSON text.

    Tensor data is dumped on its own so non-finite floats can be turned into
    null with one regex pass (a number list holds no strings to corrupt)
    instead of walking millions of Python floats.
    """
    meta = {k: v for k, v in payload.meta.items() if k != "tensors"}
    head = _dumps(_finite(meta))
    parts = []
    for name, tensor in _ordered_tensors(payload).items():
        data = json.dumps(tensor.tolist(), separators=(",", ":"))
        if tensor.dtype.startswith("float"):
            data = _NON_FINITE.sub("null", data)
        parts.append(
            f'{_dumps(name)}:{{"dtype":{_dumps(tensor.dtype)},'
            f'"shape":{_dumps(list(tensor.shape))},"data":{data}}}'
        )
    return head[:-1] + ("," if meta else "") + '"tensors":{' + ",".join(parts) + "}}"


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _finite(value: Any) -> Any:
    """The same JSON value with NaN and infinities replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --- safetensors -------------------------------------------------------------


def _safetensors_body(payloads: Sequence[AttributionPayload], batch: bool) -> bytes:
    """Tensors as-is (``"<i>."``-prefixed in a batch); meta as JSON in ``intgrads``."""
    if not batch:
        (payload,) = payloads
        meta_text = _dumps(_finite(payload.meta))
        return write_safetensors(_ordered_tensors(payload), {"intgrads": meta_text})
    tensors: dict[str, RawTensor] = {}
    for index, payload in enumerate(payloads):
        for name, tensor in _ordered_tensors(payload).items():
            tensors[f"{index}.{name}"] = tensor
    meta_text = _dumps([_finite(p.meta) for p in payloads])
    return write_safetensors(tensors, {"intgrads": meta_text})
