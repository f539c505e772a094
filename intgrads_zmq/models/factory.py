"""Pick the adapter for a loaded classifier, and prove it computes the model.

Every adapter is checked once at load: the logits it computes from the
attributed layer's output must equal the model's own forward on a probe text.
A fast path that fails the check falls back to the hook path (and says so);
any other failure is a clear :class:`ModelLoadError` instead of silently wrong
attributions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ModelLoadError
from .adapters import BertEncoderAdapter, Head, HookAdapter, InputsEmbedsAdapter
from .base import ClassifierAdapter, labels_of, logits_of

log = logging.getLogger(__name__)

PROBE_TEXT = "A probe sentence, checked once: the model must agree with itself."
CHECK_TOLERANCE = 1e-4


def _bert_pooler_head(model: Any) -> Head:
    return lambda hidden: model.classifier(model.dropout(model.bert.pooler(hidden)))


def _classifier_head(model: Any) -> Head:
    return lambda hidden: model.classifier(hidden)


# Hugging Face heads that read only the first token, by class name.
KNOWN_HEADS: dict[str, tuple[str, Callable[[Any], Head]]] = {
    "BertForSequenceClassification": ("bert", _bert_pooler_head),
    "RobertaForSequenceClassification": ("roberta", _classifier_head),
    "XLMRobertaForSequenceClassification": ("roberta", _classifier_head),
    "CamembertForSequenceClassification": ("roberta", _classifier_head),
}


def build_adapter(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    name: str,
    device: torch.device,
    labels: list[str] | None = None,
) -> ClassifierAdapter:
    """Wrap ``model`` in the fastest adapter that reproduces its forward."""
    common = {
        "name": name,
        "model": model,
        "tokenizer": tokenizer,
        "labels": labels or labels_of(model),
        "device": device,
        "max_positions": _max_positions(model),
    }
    adapter = _choose(model, common)
    verify_adapter(adapter)
    return adapter


def _choose(model: torch.nn.Module, common: dict[str, Any]) -> ClassifierAdapter:
    classify_hidden = getattr(model, "classify_hidden", None)
    if callable(classify_hidden) and hasattr(model, "bert"):
        return BertEncoderAdapter(
            encoder_model=model.bert,
            head=classify_hidden,
            head_reads_cls_only=bool(getattr(model, "head_reads_cls_only", False)),
            **common,
        )
    known = KNOWN_HEADS.get(type(model).__name__)
    if known is not None and hasattr(getattr(model, known[0], None), "encoder"):
        return BertEncoderAdapter(
            encoder_model=getattr(model, known[0]),
            head=known[1](model),
            head_reads_cls_only=True,
            **common,
        )
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    if model_type != "xlnet" and isinstance(embeddings, torch.nn.Module):
        return HookAdapter(layer=embeddings, **common)
    try:
        return InputsEmbedsAdapter(**common)
    except (AttributeError, NotImplementedError, ModelLoadError) as exc:
        raise ModelLoadError(
            f"cannot attribute {type(model).__name__}: it has no embeddings module and does "
            f"not take inputs_embeds ({exc})"
        ) from exc


def _max_positions(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", "") == "xlnet":
        return None  # relative positions: no table to run past
    value = getattr(cfg, "max_position_embeddings", None)
    if isinstance(value, int) and value > 0:
        # RoBERTa-style tables reserve padding_idx + 1 slots before position 0.
        offset = 2 if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
        return value - offset
    return None


def verify_adapter(adapter: ClassifierAdapter) -> None:
    """Check adapter logits == model logits on a probe; fall back or fail."""
    error = _probe_error(adapter)
    if error <= CHECK_TOLERANCE:
        return
    if isinstance(adapter, BertEncoderAdapter) and adapter.fast:
        log.warning(
            "fast encoder path for %s differs from its forward by %.2e; using the hook path",
            adapter.name,
            error,
        )
        adapter.fast = False
        error = _probe_error(adapter)
        if error <= CHECK_TOLERANCE:
            return
    raise ModelLoadError(
        f"model '{adapter.name}': logits computed from the embedding layer differ from the "
        f"model's own forward by {error:.2e}; this architecture is not supported"
    )


def _probe_error(adapter: ClassifierAdapter) -> float:
    encoded = adapter.encode(PROBE_TEXT, 64)
    with torch.no_grad():
        reference = _model_logits(adapter, encoded)
        points = adapter.layer_output(encoded.input_ids, encoded)
        ours = adapter.logits_from_layer(points, encoded)
    scale = float(reference.abs().max().clamp_min(1e-6))
    return float((ours.float() - reference.float()).abs().max()) / scale


def _model_logits(adapter: ClassifierAdapter, encoded: Any) -> torch.Tensor:
    kwargs = dict(encoded.extras)
    if isinstance(adapter, InputsEmbedsAdapter):
        kwargs.update(adapter.fixed_inputs)
    return logits_of(adapter.model(input_ids=encoded.input_ids, **kwargs))
