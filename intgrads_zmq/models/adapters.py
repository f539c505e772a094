"""Adapters for the three ways of reaching a classifier's embedding output.

* :class:`BertEncoderAdapter` — BERT-layout encoders (BERT, RoBERTa, MiniLM, the
  original server's BERT). Runs the encoder layers directly from the points and
  skips the work the head never reads: when the head looks only at the first
  token, the last layer is computed for that token alone (its keys and values
  still see every token). Exactly the same function, about 7% fewer FLOPs on
  bert-base; checked against the model's own forward when built.
* :class:`HookAdapter` — any model with an embeddings module: a forward hook
  swaps the module's output for the points (what Captum does).
* :class:`InputsEmbedsAdapter` — XLNet and other models that take
  ``inputs_embeds``: the points go in as the word-embedding output, batch-first
  (inside XLNet that layer's output is sequence-first, which is why a layer
  hook breaks there; captum issue 434).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ModelLoadError
from .base import ClassifierAdapter, EncodedText, logits_of

log = logging.getLogger(__name__)

Head = Callable[[torch.Tensor], torch.Tensor]


class _Captured(Exception):
    """Raised by a capture hook to stop a forward pass once the layer ran."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


def _forward_kwargs(model: torch.nn.Module) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


class HookAdapter(ClassifierAdapter):
    """Attributes to ``layer``'s output by swapping it with a forward hook."""

    kind = "hook"

    def __init__(self, *, layer: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layer = layer
        self._accepted = _forward_kwargs(self.model) & {
            "token_type_ids",
            "attention_mask",
            "position_ids",
        }

    def accepted_inputs(self) -> frozenset[str]:
        return self._accepted

    def add_position_ids(self, encoded: EncodedText) -> None:
        """Pin positions to the input's so an id baseline keeps them (RoBERTa
        would otherwise derive positions from the baseline's pad ids)."""
        pad = getattr(self.layer, "padding_idx", None)
        if isinstance(pad, int) and "position_ids" in self._accepted:
            mask = encoded.input_ids.ne(pad).long()
            encoded.extras["position_ids"] = torch.cumsum(mask, dim=1) * mask + pad

    def layer_output(self, input_ids: torch.Tensor, encoded: EncodedText) -> torch.Tensor:
        def capture(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            raise _Captured(output[0] if isinstance(output, tuple) else output)

        handle = self.layer.register_forward_hook(capture)
        try:
            with torch.no_grad():
                self.model(input_ids=input_ids, **encoded.extras)
        except _Captured as captured:
            out = captured.output
        else:
            raise ModelLoadError(f"layer {type(self.layer).__name__} did not run in forward")
        finally:
            handle.remove()
        if out.shape[:2] != input_ids.shape:
            raise ModelLoadError(
                f"the attributed layer's output has shape {tuple(out.shape)}; "
                "expected batch-first (1, tokens, hidden)"
            )
        return out.detach()

    def logits_from_layer(self, points: torch.Tensor, encoded: EncodedText) -> torch.Tensor:
        def replace(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (points, *output[1:])
            return points

        batch = points.shape[0]
        handle = self.layer.register_forward_hook(replace)
        try:
            out = self.model(
                input_ids=encoded.input_ids.expand(batch, -1), **encoded.expanded_extras(batch)
            )
        finally:
            handle.remove()
        return logits_of(out)


class BertEncoderAdapter(HookAdapter):
    """BERT-layout encoder run layer by layer from the embeddings output."""

    kind = "bert"

    def __init__(self, *, encoder_model: torch.nn.Module, head: Head, head_reads_cls_only: bool, **kwargs: Any) -> None:
        super().__init__(layer=encoder_model.embeddings, **kwargs)
        self.encoder_model = encoder_model
        self.head = head
        self.prune_last_layer = head_reads_cls_only and _is_plain_bert_layer(encoder_model.encoder.layer[-1])
        self.fast = True

    def layer_output(self, input_ids: torch.Tensor, encoded: EncodedText) -> torch.Tensor:
        kwargs = {k: v for k, v in encoded.extras.items() if k in ("token_type_ids", "position_ids")}
        with torch.no_grad():
            return self.encoder_model.embeddings(input_ids=input_ids, **kwargs)

    def logits_from_layer(self, points: torch.Tensor, encoded: EncodedText) -> torch.Tensor:
        if not self.fast:
            return super().logits_from_layer(points, encoded)
        layers = self.encoder_model.encoder.layer
        hidden = points
        last = len(layers) - 1 if self.prune_last_layer else len(layers)
        for layer in layers[:last]:
            hidden = _first(layer(hidden))
        if self.prune_last_layer:
            hidden = first_token_layer(layers[-1], hidden)
        return self.head(hidden)


class InputsEmbedsAdapter(ClassifierAdapter):
    """Feeds points as ``inputs_embeds`` (the word-embedding output)."""

    kind = "inputs_embeds"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layer = self.model.get_input_embeddings()
        accepted = _forward_kwargs(self.model)
        if "inputs_embeds" not in accepted:
            raise ModelLoadError(f"{type(self.model).__name__} does not accept inputs_embeds")
        self._accepted = accepted & {"token_type_ids", "attention_mask"}
        self.fixed_inputs = {"use_mems": False} if "use_mems" in accepted else {}

    def accepted_inputs(self) -> frozenset[str]:
        return self._accepted

    def layer_output(self, input_ids: torch.Tensor, encoded: EncodedText) -> torch.Tensor:
        with torch.no_grad():
            return self.layer(input_ids)

    def logits_from_layer(self, points: torch.Tensor, encoded: EncodedText) -> torch.Tensor:
        batch = points.shape[0]
        out = self.model(inputs_embeds=points, **encoded.expanded_extras(batch), **self.fixed_inputs)
        return logits_of(out)


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _is_plain_bert_layer(layer: torch.nn.Module) -> bool:
    """True when the layer has BERT's self-attention + FFN layout and no
    relative positions or cross-attention (the CLS-only path assumes those)."""
    attention = getattr(layer, "attention", None)
    self_attn = getattr(attention, "self", None)
    needed = (
        self_attn is not None
        and all(hasattr(self_attn, n) for n in ("query", "key", "value", "attention_head_size"))
        and hasattr(attention, "output")
        and hasattr(layer, "intermediate")
        and hasattr(layer, "output")
    )
    if not needed:
        return False
    config = getattr(self_attn, "config", None)
    relative = getattr(config, "position_embedding_type", "absolute") not in (None, "absolute")
    return not relative and not getattr(layer, "is_decoder", False)


def first_token_layer(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A BERT layer computed for the first token only: (B, T, H) -> (B, 1, H).

    The first token's query attends to every token's key and value, then the
    attention output and feed-forward run on that one row. Equal to
    ``layer(hidden)[:, :1]`` for an unpadded sequence.
    """
    attn = layer.attention.self
    batch, tokens, width = hidden.shape
    heads, head_dim = attn.num_attention_heads, attn.attention_head_size
    query = attn.query(hidden[:, :1]).view(batch, 1, heads, head_dim).transpose(1, 2)
    key = attn.key(hidden).view(batch, tokens, heads, head_dim).transpose(1, 2)
    value = attn.value(hidden).view(batch, tokens, heads, head_dim).transpose(1, 2)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (head_dim**-0.5)
    probs = torch.softmax(scores, dim=-1)
    context = torch.matmul(probs, value).transpose(1, 2).reshape(batch, 1, heads * head_dim)
    attended = layer.attention.output(context, hidden[:, :1])
    return layer.output(layer.intermediate(attended), attended)
