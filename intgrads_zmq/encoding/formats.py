"""Response formats: pick one from the request, then encode payloads into a body.

``torch`` (the default) keeps the original server's contract: a gzip'd
``torch.save`` dict that ``gzip.open`` + ``torch.load`` reads. ``json`` suits
clients without torch; ``safetensors`` suits clients that want raw tensors
without pickle. None of this imports torch or numpy. The public names are
the ones :mod:`intgrads_zmq.encoding` re-exports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from intgrads_zmq.encoding.chunks import Buffer, rechunk, total_length
from intgrads_zmq.encoding.gzip_stream import plan_gzip
from intgrads_zmq.encoding.json_stream import dumps, finite, tensor_json
from intgrads_zmq.encoding.reply_size import ReplyLimits, json_too_large, reply_too_large
from intgrads_zmq.encoding.safetensors_format import safetensors_parts
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
    """A response body, ready to stream, with the headers that describe it.

    ``length`` is the body's exact size when it is known before the first byte
    (torch, safetensors) and None for JSON, whose text is made as it is sent.
    :meth:`chunks` produces the body as bytes of about 512 KiB, copied from
    the tensor frames just before they are written (a reply of hundreds of
    MB is never joined); :attr:`body` joins them, for small replies and tests.
    """

    media_type: str
    filename: str | None
    length: int | None
    tensor_bytes: int  # the raw tensor data it carries
    _pieces: Callable[[], Iterable[Buffer]]

    def chunks(self) -> Iterator[bytes]:
        return rechunk(self._pieces())

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks())


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


def encode(payloads: Sequence[AttributionPayload], fmt: str, *, batch: bool,
           limits: ReplyLimits | None = None) -> EncodedBody:
    """Encode results as ``fmt``; ``batch`` wraps them as ``{"results": [...]}``.

    A non-batch body holds exactly one payload, keyed like the original
    server's. ``limits`` are checked here, before a byte is produced:
    :class:`~intgrads_zmq.errors.PayloadTooLarge` (413) names the size.
    """
    spec = FORMATS.get(fmt)
    if spec is None:
        raise ValueError(f"unknown format {fmt!r}")
    if not batch and len(payloads) != 1:
        raise ValueError(f"a single-result body needs exactly one payload, got {len(payloads)}")
    limits = limits or ReplyLimits()
    tensor_bytes = sum(t.nbytes for payload in payloads for t in payload.tensors.values())
    if fmt != "json" and limits.max_reply is not None and tensor_bytes > limits.max_reply:
        raise reply_too_large(tensor_bytes, limits.max_reply, exact=False)  # before any checksum
    pieces: Callable[[], Iterable[Buffer]]
    if fmt == "torch":
        dicts = [_torch_dict(p) for p in payloads]
        plan = plan_gzip(torch_save_chunks({"results": dicts} if batch else dicts[0]))
        length: int | None = plan.length
        pieces = plan.pieces
    elif fmt == "json":
        if limits.max_json_tensors is not None and tensor_bytes > limits.max_json_tensors:
            binary = total_length(_safetensors_parts(payloads, batch))
            raise json_too_large(tensor_bytes, limits.max_json_tensors, binary_size=binary, exact=True)
        length = None
        pieces = lambda: _encoded(_json_pieces(payloads, batch))  # noqa: E731
    else:
        parts = _safetensors_parts(payloads, batch)
        length = total_length(parts)
        pieces = lambda: parts  # noqa: E731
    if length is not None and limits.max_reply is not None and length > limits.max_reply:
        raise reply_too_large(length, limits.max_reply, exact=True)
    return EncodedBody(spec.media_type, spec.filename, length, tensor_bytes, pieces)


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


def _json_pieces(payloads: Sequence[AttributionPayload], batch: bool) -> Iterator[str]:
    if not batch:
        yield from _json_object(payloads[0])
        return
    yield '{"results":['
    for index, payload in enumerate(payloads):
        if index:
            yield ","
        yield from _json_object(payload)
    yield "]}"


def _json_object(payload: AttributionPayload) -> Iterator[str]:
    """All of meta plus a ``tensors`` object, as compact strict JSON text.

    Tensor data is written on its own, a block at a time (see json_stream),
    so non-finite floats become null with one regex pass per block (a
    number list holds no strings to corrupt) and no call runs for long.
    """
    meta = {k: v for k, v in payload.meta.items() if k != "tensors"}
    head = dumps(finite(meta))
    yield head[:-1] + ("," if meta else "") + '"tensors":{'
    for index, (name, tensor) in enumerate(_ordered_tensors(payload).items()):
        yield ("," if index else "") + (
            f'{dumps(name)}:{{"dtype":{dumps(tensor.dtype)},"shape":{dumps(list(tensor.shape))},"data":'
        )
        yield from tensor_json(tensor)
        yield "}"
    yield "}}"


def _encoded(texts: Iterable[str]) -> Iterator[bytes]:
    for text in texts:
        yield text.encode("utf-8")


# --- safetensors -------------------------------------------------------------


def _safetensors_parts(payloads: Sequence[AttributionPayload], batch: bool) -> list[Buffer]:
    """Tensors as-is (``"<i>."``-prefixed in a batch); meta as JSON in ``intgrads``."""
    if not batch:
        (payload,) = payloads
        return safetensors_parts(_ordered_tensors(payload), {"intgrads": dumps(finite(payload.meta))})
    tensors: dict[str, RawTensor] = {}
    for index, payload in enumerate(payloads):
        for name, tensor in _ordered_tensors(payload).items():
            tensors[f"{index}.{name}"] = tensor
    return safetensors_parts(tensors, {"intgrads": dumps([finite(p.meta) for p in payloads])})
