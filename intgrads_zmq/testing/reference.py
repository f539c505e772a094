"""Captum's LayerIntegratedGradients on our models: the reference answers.

Token-id baselines (pad/unk/period) go straight through Captum as baseline
ids. Tensor baselines (zero/rand-*) live in the embedding output space, which
Captum's API cannot take directly, so the model is wrapped: a ``Swap`` module
sits right after the embedding layer, and a marker baseline id (-1) makes it
emit the tensor baseline. Captum attributes to ``Swap``'s output, which is the
embedding output for the input and the tensor baseline for the baseline.
"""

from __future__ import annotations

import torch
from captum.attr import LayerIntegratedGradients

MARKER = -1


class Swap(torch.nn.Module):
    """Identity for real ids; the stored baseline tensor for the marker ids."""

    def __init__(self, baseline: torch.Tensor | None) -> None:
        super().__init__()
        self.baseline = baseline

    def forward(self, embedded: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.baseline is not None and bool((ids == MARKER).all()):
            return self.baseline.expand_as(embedded)
        return embedded


def captum_reference(adapter, text: str, *, target: int, n_steps: int, method: str,
                     baseline_kind: str, baseline_tensor: torch.Tensor | None,
                     max_length: int = 512) -> torch.Tensor:
    """Captum LIG attributions (1, T, H) for one of our adapters' models."""
    encoded = adapter.encode(text, max_length)
    swap = Swap(baseline_tensor)
    embed = _embedder(adapter)

    def forward(ids: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        real = ids.clamp_min(0)
        kwargs = dict(zip(sorted(encoded.extras), extras, strict=True))
        embedded = swap(embed(real, kwargs), ids)
        return _run_from_embedded(adapter, embedded, kwargs)

    if baseline_tensor is None:
        baseline_ids = torch.full_like(encoded.input_ids, adapter.special_token_id(baseline_kind))
    else:
        baseline_ids = torch.full_like(encoded.input_ids, MARKER)
    lig = LayerIntegratedGradients(forward, swap)
    extras = tuple(encoded.extras[k] for k in sorted(encoded.extras))
    return lig.attribute(
        encoded.input_ids, baselines=baseline_ids, additional_forward_args=extras,
        target=target, n_steps=n_steps, method=method,
    ).detach()


def _embedder(adapter):
    model = adapter.model
    if adapter.kind == "inputs_embeds":
        layer = model.get_input_embeddings()
        return lambda ids, kwargs: layer(ids)
    embeddings = getattr(model, "bert", None)
    embeddings = embeddings.embeddings if embeddings is not None else model.base_model.embeddings

    def run(ids, kwargs):
        keep = {k: v for k, v in kwargs.items() if k in ("token_type_ids", "position_ids")}
        return embeddings(input_ids=ids, **keep)

    return run


def _run_from_embedded(adapter, embedded: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The model's own forward with its embedding output replaced (hook)."""
    model = adapter.model
    batch = embedded.shape[0]
    kwargs = {k: v.expand(batch, *v.shape[1:]) for k, v in kwargs.items()}
    if adapter.kind == "inputs_embeds":
        out = model(inputs_embeds=embedded, **kwargs, **adapter.fixed_inputs)
        return out.logits
    embeddings = getattr(model, "bert", None)
    embeddings = embeddings.embeddings if embeddings is not None else model.base_model.embeddings
    handle = embeddings.register_forward_hook(lambda _m, _i, _o: embedded)
    try:
        dummy = torch.zeros(embedded.shape[:2], dtype=torch.long, device=embedded.device)
        out = model(input_ids=dummy, **{k: v for k, v in kwargs.items() if k != "position_ids"})
    finally:
        handle.remove()
    return out.logits if hasattr(out, "logits") else out
