"""Baselines as the original server's table defines them.

``zero``, ``rand-norm`` and ``rand-unif`` are tensors in the attributed
layer's output space (what leaves the embeddings). ``pad``, ``unk``,
``period`` and ``mask`` (the tokenizer's mask token, for models trained with
one: the "nothing is known here" input of masked-language pretraining) are
token ids fed into the embedding layer in place of every input id, special
tokens included as the seed did, keeping the input's positions and token
types. A model without the token asked for gets a 400 naming ``baseline``. Random baselines come from
a CPU generator seeded by the request, so the same seed gives the same
baseline on any device.
"""

from __future__ import annotations

import torch

from ..models.base import ClassifierAdapter, EncodedText

TOKEN_BASELINES = ("pad", "unk", "period", "mask")


def make_baseline(
    adapter: ClassifierAdapter,
    encoded: EncodedText,
    kind: str,
    seed: int,
    layer_input: torch.Tensor,
) -> torch.Tensor:
    """The baseline x' with the same shape, dtype and device as ``layer_input``."""
    if kind == "zero":
        return torch.zeros_like(layer_input)
    if kind in ("rand-norm", "rand-unif"):
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        draw = torch.randn if kind == "rand-norm" else torch.rand
        values = draw(tuple(layer_input.shape), generator=generator, dtype=torch.float32)
        return values.to(device=layer_input.device, dtype=layer_input.dtype)
    if kind in TOKEN_BASELINES:
        token_id = adapter.special_token_id(kind)
        ids = torch.full_like(encoded.input_ids, token_id)
        return adapter.layer_output(ids, encoded).to(layer_input.dtype)
    raise ValueError(f"unknown baseline {kind!r}")
