"""Streamed reply bodies and their bounds (issue 16.1), checked against the real readers.

The encoders describe a body as pieces that reference the tensor frames; the
HTTP frontend writes them as bytes of at most CHUNK_BYTES. These tests hold
the streamed bytes to the readers (torch.load, safetensors, json, gzip), the
announced length to the bytes, the pieces to their size, the JSON blocks to
their bound (what keeps one call short), and the 413s to their wording.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from intgrads_zmq.encoding import ReplyLimits, encode
from intgrads_zmq.encoding.chunks import CHUNK_BYTES, rechunk
from intgrads_zmq.encoding.gzip_stream import gzip_chunks, plan_gzip, stored_size
from intgrads_zmq.encoding.json_stream import tensor_json
from intgrads_zmq.encoding.reply_size import (
    DEFAULT_MAX_REPLY,
    min_tensor_bytes,
    min_tokens,
    tensor_bytes_for,
)
from intgrads_zmq.errors import PayloadTooLarge
from intgrads_zmq.options import TENSOR_FIELDS
from intgrads_zmq.payload import AttributionPayload

from .test_encoding import sample, to_raw

FIELDS = list(TENSOR_FIELDS)


def attribution(steps: int, tokens: int, hidden: int, seed: int = 0) -> AttributionPayload:
    """A payload shaped like a worker's reply (float32, all four fields)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "integrated_gradients": torch.randn(1, tokens, hidden, generator=gen),
        "intermediate_gradients": torch.randn(steps, tokens, hidden, generator=gen),
        "step_sizes": torch.full((steps, 1), 1 / steps),
        "intermediates": torch.randn(steps, tokens, hidden, generator=gen),
    }
    meta = {"model": "m", "tokens": [f"t{i}" for i in range(tokens)], "target": 1, "n_steps": steps,
            "attributions": [0.5] * tokens, "completeness_error": float("nan")}
    return AttributionPayload(meta=meta, tensors=to_raw(tensors))


# --- rechunk -------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 7, 64])
def test_rechunk_keeps_the_bytes_and_cuts_at_the_size(size: int) -> None:
    pieces = [b"abc", b"", memoryview(bytes(range(50))), bytearray(b"xy"), b"z" * 100]
    out = list(rechunk(pieces, size))
    assert b"".join(out) == b"".join(bytes(p) for p in pieces)
    assert all(isinstance(chunk, bytes) for chunk in out)
    assert all(len(chunk) == size for chunk in out[:-1]) and 0 < len(out[-1]) <= size
    assert list(rechunk([b"", memoryview(b"")], size)) == []


def test_rechunk_of_float_views_counts_bytes() -> None:
    floats = memoryview(struct.pack("<6f", *range(6))).cast("f")
    assert b"".join(rechunk([floats], 5)) == bytes(floats.cast("B"))
    with pytest.raises(ValueError):
        list(rechunk([b"x"], 0))


# --- gzip plan ----------------------------------------------------------------------


def test_gzip_plan_knows_its_length_before_writing() -> None:
    big = struct.pack("<70000f", *(math.sin(i) for i in range(70000)))  # 280 kB: several stored blocks
    pieces = [b"head" * 10, memoryview(big), b"", b"tail" * 3000, big[:65535], b"x"]
    plan = plan_gzip(pieces)
    body = b"".join(plan.pieces())
    assert plan.length == len(body) == len(gzip_chunks(pieces))
    assert gzip.decompress(body) == b"".join(bytes(p) for p in pieces)
    assert stored_size(0) == 0 and stored_size(1) == 6 and stored_size(65535) == 65540 and stored_size(65536) == 65546


def test_gzip_plan_references_big_buffers() -> None:
    big = bytearray(200_000)
    plan = plan_gzip([b"h", big])
    stored = [segment for segment, is_big in zip(plan.segments, plan.stored, strict=True) if is_big]
    assert len(stored) == 1 and stored[0].obj is big  # a view of the caller's buffer, not a copy


# --- whole replies, streamed ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torch", "safetensors", "json"])
@pytest.mark.parametrize("batch", [False, True])
def test_streamed_bodies_read_back_and_match_their_length(fmt: str, batch: bool) -> None:
    payloads = [attribution(30, 40, 64, seed) for seed in range(2 if batch else 1)]  # 0.6 MB each
    encoded = encode(payloads, fmt, batch=batch)
    chunks = list(encoded.chunks())
    body = b"".join(chunks)
    assert all(len(chunk) <= CHUNK_BYTES for chunk in chunks) and len(chunks) > 1
    assert encoded.tensor_bytes == sum(tensor_bytes_for(40, 30, 64, FIELDS) for _ in payloads)
    if fmt == "json":
        assert encoded.length is None
        doc = json.loads(body)
        results = doc["results"] if batch else [doc]
        for got, payload in zip(results, payloads, strict=True):
            assert got["completeness_error"] is None
            for name, raw in payload.tensors.items():
                assert got["tensors"][name]["data"] == raw.tolist()
        return
    assert encoded.length == len(body)
    if fmt == "torch":
        loaded = torch.load(io.BytesIO(gzip.decompress(body)), weights_only=True)
        results = loaded["results"] if batch else [loaded]
        for got, payload in zip(results, payloads, strict=True):
            for name, raw in payload.tensors.items():
                assert got[name].numpy().tobytes() == bytes(raw.data)
    else:
        loaded = safetensors.torch.load(body)
        for index, payload in enumerate(payloads):
            for name, raw in payload.tensors.items():
                key = f"{index}.{name}" if batch else name
                assert loaded[key].numpy().tobytes() == bytes(raw.data)


def test_a_body_can_be_streamed_again() -> None:
    encoded = encode([attribution(3, 5, 8)], "torch", batch=False)
    assert b"".join(encoded.chunks()) == encoded.body == b"".join(encoded.chunks())


# --- JSON in short blocks ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4), (2, 2, 2, 3), (1, 1, 7), (4, 1, 3), (3, 5, 1), (2, 0, 3)])
@pytest.mark.parametrize("block", [1, 2, 3, 5, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64])
def test_json_blocks_write_what_one_dumps_would(shape: tuple[int, ...], block: int, dtype: torch.dtype) -> None:
    tensor = sample(dtype, shape, seed=len(shape) + block)
    if dtype.is_floating_point and tensor.numel() > 2:
        tensor.view(-1)[1] = float("nan")
        tensor.view(-1)[-1] = float("-inf")
    raw = to_raw(tensor)
    want = json.dumps(raw.tolist(), separators=(",", ":")).replace("NaN", "null").replace("-Infinity", "null")
    pieces = list(tensor_json(raw, block))
    assert "".join(pieces) == want
    inner = shape[-1] if shape else 1
    for piece in pieces:  # no piece converts more than a block (or one innermost row)
        if any(ch.isalnum() for ch in piece) and len(pieces) > 1:
            assert piece.count(",") + 1 <= max(block, inner)


def test_json_of_a_big_tensor_comes_in_many_short_pieces() -> None:
    raw = to_raw(torch.randn(40, 64, 48))  # 122,880 numbers
    pieces = list(tensor_json(raw))
    assert len(pieces) > 10
    numbers = [piece.count(",") + 1 for piece in pieces if any(ch.isdigit() for ch in piece)]
    assert max(numbers) <= 1 << 14
    assert json.loads("".join(pieces)) == raw.tolist()


# --- bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_a_binary_reply_over_max_reply_is_413_naming_size_and_setting(fmt: str) -> None:
    payload = attribution(10, 20, 16)
    size = encode([payload], fmt, batch=False).length
    assert encode([payload], fmt, batch=False, limits=ReplyLimits(max_reply=size)).length == size  # at the bound
    with pytest.raises(PayloadTooLarge) as info:
        encode([payload], fmt, batch=False, limits=ReplyLimits(max_reply=size - 1))
    error = info.value
    assert error.status == 413 and error.field == "fields"
    assert f"{size:,} bytes" in error.description and "INTGRADS_MAX_REPLY" in error.description
    with pytest.raises(PayloadTooLarge, match="at least"):  # tensors alone are over: refused before any CRC
        encode([payload], fmt, batch=False, limits=ReplyLimits(max_reply=1000))


def test_json_over_its_tensor_bound_names_the_binary_formats_and_their_size() -> None:
    payload = attribution(10, 20, 16)
    tensors = sum(t.nbytes for t in payload.tensors.values())
    assert encode([payload], "json", batch=False, limits=ReplyLimits(max_json_tensors=tensors)).length is None
    with pytest.raises(PayloadTooLarge) as info:
        encode([payload], "json", batch=False, limits=ReplyLimits(max_json_tensors=tensors - 1))
    text = info.value.description
    safetensors_size = encode([payload], "safetensors", batch=False).length
    assert info.value.field == "format" and "INTGRADS_MAX_JSON_TENSORS" in text
    assert "?format=safetensors" in text and "?format=torch" in text
    assert f"{tensors:,} bytes" in text and f"{safetensors_size:,} bytes" in text
    summary = AttributionPayload(meta=payload.meta, tensors={})  # the JSON summary is never refused
    assert json.loads(encode([summary], "json", batch=False, limits=ReplyLimits(1, 1)).body)["target"] == 1


def test_the_default_bound_admits_the_largest_bert_base_torch_reply() -> None:
    tensors = tensor_bytes_for(512, 300, 768, FIELDS)
    assert tensors == 4 * (512 * 768 + 2 * 300 * 512 * 768 + 300) == 945_292_464
    # Encoding overhead measured on a same-shaped smaller reply, scaled up generously.
    small = attribution(30, 64, 96)
    overhead = encode([small], "torch", batch=False).length - encode([small], "torch", batch=False).tensor_bytes
    assert tensors + 100 * overhead < DEFAULT_MAX_REPLY < 2 * tensors


# --- the lower bound used before computing ----------------------------------------------

TEXTS = [
    "a great film",
    "the story is not very good , but the music is great !",
    "naïve café — a great film ☺ with 日本 music 🎬 and a \u200b sad ending",
    "!!! ... ,,, ???",
    "\u200b \u200b word",
    "supercalifragilisticexpialidocious " * 3,
    " ".join(["the worst script ever , a dull mess ."] * 30),
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("model", ["tiny_bert", "tiny_xlnet"])
def test_min_tokens_is_a_lower_bound_for_real_tokenizers(text: str, model: str, request: Any) -> None:
    adapter = request.getfixturevalue(model)
    for cap in (512, 16, 3):
        # Inputs are cut at max_length and at the model's positions: the frontend
        # passes the smaller of those it knows (here the tiny models' 128).
        cap = min(cap, adapter.max_positions or cap)
        tokens = len(adapter.encode(text, cap).input_ids.view(-1))
        assert min_tokens(text, cap) <= tokens, (text, cap)


def test_min_tensor_bytes_counts_fields_steps_and_texts() -> None:
    texts = ["one two three", "four"]
    assert min_tensor_bytes(texts, fields=["integrated_gradients"], n_steps=50, hidden=10, max_tokens=512) == 4 * 10 * 4
    both = min_tensor_bytes(texts, fields=["intermediates", "step_sizes"], n_steps=5, hidden=10, max_tokens=2)
    assert both == 4 * ((5 * 2 * 10 + 5) + (5 * 1 * 10 + 5))
    assert min_tensor_bytes(texts, fields=["intermediates"], n_steps="auto", hidden=10, max_tokens=512) == 4 * 40


def test_a_streamed_torch_reply_written_to_a_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "r.gzip"
    with path.open("wb") as handle:
        for chunk in encode([attribution(20, 64, 96)], "torch", batch=False).chunks():
            handle.write(chunk)
    assert torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=True)["n_steps"] == 20


# --- the frontend's use of the bounds -----------------------------------------------------


def bert_base_status() -> dict[str, Any]:
    """A model entry of the broker's status, as bert-base workers describe it."""
    return {"description": {"hidden": 768, "max_positions": 512}, "defaults": {"n_steps": 50, "max_length": 512},
            "limits": {"max_steps": 300, "max_length": 512}}


def test_the_frontend_refuses_before_computing_what_is_certainly_over_a_bound() -> None:
    from frontend.resources import check_reply_size
    from intgrads_zmq.options import Limits, parse_request

    text = " ".join(["word"] * 600)  # at least 512 tokens once truncated
    parsed = parse_request({"sequence": text, "n_steps": 300, "fields": FIELDS}, Limits())
    options = {"n_steps": 300, "fields": FIELDS}
    model = bert_base_status()
    with pytest.raises(PayloadTooLarge, match=r"at least .*INTGRADS_MAX_JSON_TENSORS") as info:
        check_reply_size(parsed, options, "json", model, ReplyLimits(DEFAULT_MAX_REPLY, 16 << 20))
    assert info.value.field == "format"
    check_reply_size(parsed, options, "torch", model, ReplyLimits(DEFAULT_MAX_REPLY, 16 << 20))  # 941 MB: fits
    with pytest.raises(PayloadTooLarge, match="INTGRADS_MAX_REPLY"):
        check_reply_size(parsed, options, "torch", model, ReplyLimits(100 << 20, None))
    short = parse_request({"sequence": "a great film", "fields": FIELDS}, Limits())
    check_reply_size(short, {"fields": FIELDS}, "json", model, ReplyLimits(1 << 20, 1 << 20))  # 50 x 3 x 768 floats
    # Whatever cannot be known is not guessed: no model, no hidden size, no fields.
    check_reply_size(parsed, options, "json", None, ReplyLimits(1, 1))
    check_reply_size(parsed, options, "json", {**model, "description": {}}, ReplyLimits(1, 1))
    check_reply_size(parsed, {"fields": []}, "json", model, ReplyLimits(1, 1))


def test_a_batch_answers_with_the_failure_not_with_the_siblings_it_cancelled() -> None:
    from frontend.resources import first_failure
    from intgrads_zmq.errors import Cancelled, ComputeFailed, QueueFull

    sibling, cause = Cancelled("cancelled because sequences[1] failed"), ComputeFailed("the model raised")
    assert first_failure([sibling, cause, sibling], batch=True) is cause and cause.field == "sequences[1]"
    assert first_failure([attribution(1, 1, 1)], batch=False) is None
    refusal = QueueFull("a batch of 3 texts does not fit now")
    refusal.whole_batch = True  # as the broker client marks a refusal of the whole batch
    assert first_failure([refusal] * 3, batch=True).field is None
