"""Turn a :class:`ModelSpec` into a ready adapter on a device (worker side)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..errors import ModelLoadError
from .base import ClassifierAdapter, freeze
from .factory import build_adapter
from .hf import attention_for, load_hf_directory
from .spec import ModelSpec

log = logging.getLogger(__name__)


def load_model(spec: ModelSpec, device: torch.device, *, device_map: Any = None) -> ClassifierAdapter:
    """Load the model a spec names and wrap it in its verified adapter."""
    if spec.kind == "hf":
        model, tokenizer = load_hf_directory(
            spec.path or "", device, tokenizer_dir=spec.tokenizer, device_map=device_map
        )
    else:
        model, tokenizer = _load_special(spec, device)
        _use_attention(model, attention_for(device))
        if device_map is not None:
            model = _dispatch(model, device_map)
        else:
            model.to(device)
        freeze(model)
    if tokenizer is None:
        raise ModelLoadError(f"model '{spec.name}' needs --tokenizer DIR (no hub downloads here)")
    input_device = _input_device(model, device)
    return build_adapter(model, tokenizer, name=spec.name, device=input_device)


def _load_special(spec: ModelSpec, device: torch.device) -> tuple[torch.nn.Module, Any]:
    if spec.kind == "demo":
        from .demo import load_demo_model

        return load_demo_model("cpu")
    from .checkpoints import load_original_bert, load_original_xlnet

    if spec.kind == "bert":
        return load_original_bert(spec.path or "", spec.tokenizer)
    size = "large" if spec.kind == "xlnet-large" else "base"
    return load_original_xlnet(spec.path or "", spec.tokenizer, size=size)


def _use_attention(model: torch.nn.Module, implementation: str) -> None:
    """Switch every Hugging Face submodel to the chosen attention kernel."""
    for module in model.modules():
        setter = getattr(module, "set_attn_implementation", None)
        if callable(setter) and getattr(module, "config", None) is not None:
            try:
                setter(implementation)
            except (ValueError, ImportError, AttributeError):
                log.debug("%s keeps its attention kernel", type(module).__name__)
            return


def _dispatch(model: torch.nn.Module, device_map: Any) -> torch.nn.Module:
    """Split a non-Hugging-Face wrapper across the group's GPUs with accelerate."""
    from accelerate import dispatch_model, infer_auto_device_map

    if device_map == "auto":
        device_map = infer_auto_device_map(model, no_split_module_classes=_layer_classes(model))
    return dispatch_model(model, device_map=device_map)


def _layer_classes(model: torch.nn.Module) -> list[str]:
    names = {type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Layer")}
    return sorted(names)


def _input_device(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where input ids must live: the word embeddings' device under a device map."""
    try:
        embeddings = model.get_input_embeddings()  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        embeddings = None
    if embeddings is None:
        embeddings = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    if embeddings is None:
        return fallback
    return embeddings.weight.device
