"""What the engine needs from a classifier, whatever its architecture.

An adapter hides where the attributed layer sits and how to run the rest of
the model from that layer's output. The engine only ever asks three things:
tokenise a text, give the layer output for some token ids (the input, or a
pad/unk/period baseline with the input's positions and token types), and give
the logits for a batch of points in that layer's output space. Tensors that
cross this interface are batch-first, ``(batch, tokens, hidden)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadRequest


@dataclass
class EncodedText:
    """A tokenised text, ready for the model (batch of one)."""

    input_ids: torch.Tensor  # (1, tokens), on the model's input device
    extras: dict[str, torch.Tensor]  # further (1, tokens) inputs: token types, mask, positions
    tokens: list[str]
    truncated: bool
    # Where each token came from, for merging pieces into words
    # (models/words.py): its character span [start, end) in the text (start ==
    # end for tokens the tokenizer added or a space it folded into a token),
    # or None when the tokenizer cannot say (a slow, pure-Python one).
    offsets: list[tuple[int, int]] | None = None
    special: list[bool] | None = None  # True for tokens the tokenizer added ([CLS], <sep>, ...)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def expanded_extras(self, batch: int) -> dict[str, torch.Tensor]:
        """The extra inputs repeated (as views) for a batch of path points."""
        return {k: v.expand(batch, *v.shape[1:]) for k, v in self.extras.items()}


class ClassifierAdapter(ABC):
    """A loaded sequence classifier seen through its attributed layer."""

    kind: str = "generic"

    def __init__(
        self,
        *,
        name: str,
        model: torch.nn.Module,
        tokenizer: Any,
        labels: list[str],
        device: torch.device,
        max_positions: int | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.device = device
        self.max_positions = max_positions

    # -- tokenisation ---------------------------------------------------
    def encode(self, text: str, max_length: int) -> EncodedText:
        """Tokenise ``text``, truncating to ``max_length`` tokens as the seed did."""
        limit = max_length if self.max_positions is None else min(max_length, self.max_positions)
        # Character offsets come only from a fast (Rust) tokenizer; every
        # tokenizer this project builds is one, a slow one simply has none.
        where = {
            "return_offsets_mapping": bool(getattr(self.tokenizer, "is_fast", False)),
            "return_special_tokens_mask": True,
        }
        batch = self.tokenizer(text, truncation=False, return_tensors="pt", verbose=False, **where)
        truncated = batch["input_ids"].shape[1] > limit
        if truncated:  # tokenise again so the special tokens survive the cut
            batch = self.tokenizer(
                text, truncation=True, max_length=limit, return_tensors="pt", verbose=False, **where
            )
        offsets = batch.pop("offset_mapping", None)
        special = batch.pop("special_tokens_mask", None)
        input_ids = batch["input_ids"].to(self.device)
        if input_ids.shape[1] == 0:
            raise BadRequest("the text produced no tokens", field="sequence")
        extras = {
            k: v.to(self.device)
            for k, v in batch.items()
            if k != "input_ids" and k in self.accepted_inputs()
        }
        tokens = self.tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
        encoded = EncodedText(input_ids, extras, [str(t) for t in tokens], truncated)
        if offsets is not None:
            encoded.offsets = [(int(a), int(b)) for a, b in offsets[0].tolist()]
        if special is not None:
            encoded.special = [bool(v) for v in special[0].tolist()]
        self.add_position_ids(encoded)
        return encoded

    def accepted_inputs(self) -> frozenset[str]:
        """Keyword inputs the model's forward takes besides ``input_ids``."""
        return frozenset({"token_type_ids", "attention_mask"})

    def add_position_ids(self, encoded: EncodedText) -> None:
        """Hook for adapters that must pin positions to the input's."""
        return None

    def special_token_id(self, which: str) -> int:
        """Token id of a token-id baseline (``pad``, ``unk``, ``period`` or ``mask``)."""
        tok = self.tokenizer
        if which == "pad":
            token_id = tok.pad_token_id
        elif which == "unk":
            token_id = tok.unk_token_id
        elif which == "mask":  # BERT's [MASK], XLNet's <mask>; GPT-style tokenizers have none
            token_id = getattr(tok, "mask_token_id", None)
        elif which == "period":
            ids = tok(".", add_special_tokens=False)["input_ids"]
            token_id = ids[-1] if ids else None
        else:
            raise ValueError(which)
        if token_id is None:
            raise BadRequest(
                f"model '{self.name}' has no {which} token; choose another baseline",
                field="baseline",
            )
        return int(token_id)

    # -- the two computations the engine runs ---------------------------
    @abstractmethod
    def layer_output(self, input_ids: torch.Tensor, encoded: EncodedText) -> torch.Tensor:
        """The attributed layer's output (1, T, H) for these ids, no grad."""

    @abstractmethod
    def logits_from_layer(self, points: torch.Tensor, encoded: EncodedText) -> torch.Tensor:
        """Logits (B, classes) with the attributed layer's output set to ``points``."""

    # -- description ----------------------------------------------------
    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)

    def size_hints(self) -> dict[str, int]:
        """Model dimensions used to size chunks of steps to a memory budget."""
        cfg = self.config
        hidden = _first_attr(cfg, ("hidden_size", "d_model", "dim", "n_embd"), 768)
        return {
            "hidden": hidden,
            "layers": _first_attr(cfg, ("num_hidden_layers", "n_layer", "n_layers"), 12),
            "heads": _first_attr(cfg, ("num_attention_heads", "n_head", "n_heads"), 12),
            "intermediate": _first_attr(cfg, ("intermediate_size", "d_inner", "hidden_dim"), 4 * hidden),
        }

    def describe(self) -> dict[str, Any]:
        """Plain-data summary announced to the broker and shown by ``/models``."""
        return {
            "name": self.name,
            "kind": self.kind,
            "labels": list(self.labels),
            "architecture": type(self.model).__name__,
            "max_positions": self.max_positions,
            **self.size_hints(),
        }


def _first_attr(obj: Any, names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def labels_of(model: torch.nn.Module) -> list[str]:
    """Class names in index order, from the model config's ``id2label``."""
    cfg = getattr(model, "config", None)
    id2label = getattr(cfg, "id2label", None) or {}
    count = getattr(cfg, "num_labels", None) or len(id2label)
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a forward's output: Hugging Face's ``.logits``, else the
    first element of a tuple, else the output itself."""
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0] if isinstance(output, (tuple, list)) else output
    return logits


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no parameter gradients: only activations carry grads."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model
