"""How big a reply is, may be, and may become: the bounds on reply bodies.

Two bounds, both refused with 413 and a description that names the size,
the setting and what to ask for instead:

* ``max_reply`` (``INTGRADS_MAX_REPLY``): any reply body. A tensor reply is
  steps x tokens x hidden floats per field: a 512-token, 300-step bert-base
  reply with all four fields is 945 MB (see :func:`tensor_bytes_for`).
* ``max_json_tensors`` (``INTGRADS_MAX_JSON_TENSORS``): the tensor data a
  JSON reply may carry. Written as text a float32 takes about 5x its bytes
  and a few hundred nanoseconds of CPU, so full tensors above a few MB
  belong in ``?format=safetensors`` or ``torch``.

The frontend checks twice: before anything is computed, against a lower
bound of the reply's size (:func:`min_tensor_bytes`: the text's words bound
its tokens from below, the model's hidden size is in the broker's status),
and, exactly, on the reply's description before a byte is encoded. Workers
and the broker are told the bound too (``RequestBody.max_reply``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from intgrads_zmq.errors import PayloadTooLarge

MAX_REPLY_SETTING = "INTGRADS_MAX_REPLY"
MAX_JSON_SETTING = "INTGRADS_MAX_JSON_TENSORS"
FLOAT_BYTES = 4  # every tensor a worker returns is float32
# The largest reply the defaults are sized for: bert-base (hidden 768), 512
# tokens, 300 steps, all four fields, as the gzip'd torch.save dict:
# 4 x (512x768 + 2 x 300x512x768 + 300) = 945,292,464 bytes of tensors and
# 945,371,770 bytes encoded (stored deflate block headers, zip records and
# the metadata: 79 kB), 901.6 MiB. 1 GiB admits it with 13.6% to spare.
DEFAULT_MAX_REPLY = 1 << 30
# 16 MiB of float32 is about 95 MB of JSON text and 6 s of one core to write.
DEFAULT_MAX_JSON_TENSORS = 16 << 20


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """Bounds on one reply body, in bytes (None: unbounded)."""

    max_reply: int | None = None
    max_json_tensors: int | None = None

    def tensor_bound(self, fmt: str) -> int | None:
        """The most tensor bytes a reply in ``fmt`` may carry (told to the
        broker and workers, which can refuse before anything crosses)."""
        if fmt == "json":
            bounds = [b for b in (self.max_json_tensors, self.max_reply) if b is not None]
            return min(bounds) if bounds else None
        return self.max_reply


def describe_bytes(size: int) -> str:
    """'945,292,464 bytes (901.5 MiB)'."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size:,} bytes ({size / (1 << shift):.1f} {unit})"
    return f"{size:,} bytes"


def reply_too_large(size: int, limit: int, *, exact: bool) -> PayloadTooLarge:
    """The 413 for a reply over ``INTGRADS_MAX_REPLY`` (``exact``: the size is
    the body's own, else a lower bound known before computing)."""
    how = "would be" if exact else "would be at least"
    return PayloadTooLarge(
        f"this reply {how} {describe_bytes(size)}, over the server's bound of {describe_bytes(limit)} "
        f"({MAX_REPLY_SETTING}); ask for fewer 'fields' (e.g. only integrated_gradients), fewer "
        "'n_steps', a smaller 'max_length' or fewer texts per request",
        field="fields",
    )


def json_too_large(tensor_bytes: int, limit: int, *, binary_size: int | None, exact: bool) -> PayloadTooLarge:
    """The 413 for JSON asked to carry more tensor data than ``INTGRADS_MAX_JSON_TENSORS``."""
    how = "" if exact else "at least "
    numbers = tensor_bytes // FLOAT_BYTES
    instead = f" (it would be {describe_bytes(binary_size)})" if binary_size is not None else ""
    return PayloadTooLarge(
        f"the tensors asked for in 'fields' hold {how}{describe_bytes(tensor_bytes)} ({numbers:,} numbers), "
        f"more than a JSON reply carries ({describe_bytes(limit)}, {MAX_JSON_SETTING}); ask for "
        f"?format=safetensors{instead} or ?format=torch, which carry the raw floats, or leave 'fields' out "
        "for the JSON summary",
        field="format",
    )


def tensor_bytes_for(tokens: int, steps: int, hidden: int, fields: Iterable[str]) -> int:
    """Bytes of the reply tensors named in ``fields`` (float32):
    integrated_gradients (1, T, H), intermediate_gradients and intermediates
    (n, T, H), step_sizes (n, 1)."""
    per_field = {
        "integrated_gradients": tokens * hidden,
        "intermediate_gradients": steps * tokens * hidden,
        "intermediates": steps * tokens * hidden,
        "step_sizes": steps,
    }
    return FLOAT_BYTES * sum(per_field.get(name, 0) for name in set(fields))


def min_tokens(text: str, max_tokens: int) -> int:
    """A lower bound on the tokens a tokenizer makes of ``text`` (capped at
    ``max_tokens``, where inputs are truncated): every whitespace-separated
    word holding a letter or digit yields at least one token in WordPiece,
    SentencePiece and byte-level BPE alike; special tokens are not counted."""
    count = 0
    for word in text.split():
        if any(ch.isalnum() for ch in word):
            count += 1
            if count >= max_tokens:
                return max_tokens
    return count


def min_tensor_bytes(texts: Iterable[str], *, fields: Iterable[str], n_steps: int | str, hidden: int,
                     max_tokens: int) -> int:
    """A lower bound on the tensor bytes of the replies to ``texts``
    (``n_steps`` "auto" counts as one step: it uses at least that)."""
    steps = n_steps if isinstance(n_steps, int) else 1
    names = tuple(fields)
    return sum(tensor_bytes_for(min_tokens(text, max_tokens), steps, hidden, names) for text in texts)
