"""State-dict files read safely, and loaded strictly into a model.

Checkpoints are untrusted input: they are read with ``weights_only=True``
only, so a file that would run code while unpickling is refused, never
executed. Every refusal or mismatch becomes one readable
:class:`~intgrads_zmq.errors.ModelLoadError`.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from intgrads_zmq.errors import ModelLoadError

PathLike = str | os.PathLike[str]

_WRAPPER_KEYS = ("state_dict", "model_state_dict")
_DATA_PARALLEL_PREFIX = "module."
_LISTED_KEYS = 8  # how many offending key names an error message spells out


def first_line(exc: BaseException) -> str:
    """One line of an exception's text, for error messages that stay readable."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def name_list(names: list[str]) -> str:
    """The first few names, and how many more there are."""
    shown = ", ".join(names[:_LISTED_KEYS])
    rest = len(names) - _LISTED_KEYS
    return shown + (f" ... and {rest} more" if rest > 0 else "")


def _refusal_message(path: Path, exc: pickle.UnpicklingError) -> str:
    """Explain a weights-only refusal; torch's own text advises unsafe loading."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (
            f"checkpoint {path} was refused: loading it would execute code "
            f"(it references {found.group(1)}, which is not a tensor or plain container)"
        )
    detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
    reason = detail[0] if detail and "WeightsUnpickler error:" in text else first_line(exc)
    return (
        f"checkpoint {path} was refused: the safe (weights-only) reader cannot parse it, so it "
        f"is either not a PyTorch checkpoint or holds objects whose loading would execute code "
        f"({reason})"
    )


def _load_weights_only(source: Path) -> object:
    """``torch.load`` with ``weights_only=True``; every failure is a ModelLoadError."""
    if not source.is_file():
        what = "is a directory, not a file" if source.is_dir() else "does not exist"
        raise ModelLoadError(f"checkpoint {source} {what}")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise ModelLoadError(_refusal_message(source, exc)) from None
        raise ModelLoadError(
            f"checkpoint {source} is not a readable PyTorch file: {first_line(exc)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign format, I/O error, ...
        raise ModelLoadError(
            f"checkpoint {source} is not a readable PyTorch file: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file as a flat ``{name: tensor}`` dict, never running code.

    Accepts a bare state dict or one wrapped under ``"state_dict"`` or
    ``"model_state_dict"``; a leading ``module.`` (from ``DataParallel``) is
    stripped from every key.

    Raises:
        ModelLoadError: the file is missing, unreadable, refused by the
            weights-only unpickler, or does not hold a dict of tensors.
    """
    source = Path(path)
    loaded = _load_weights_only(source)
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        kind = "an empty dict" if isinstance(loaded, Mapping) else type(loaded).__name__
        raise ModelLoadError(f"checkpoint {source} holds {kind}, not a state dict of tensors")

    not_tensors = sorted(str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ModelLoadError(
            f"checkpoint {source} is not a state dict of tensors; these entries are not tensors: "
            f"{name_list(not_tensors)}"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        name = str(key).removeprefix(_DATA_PARALLEL_PREFIX)
        if name in state:
            raise ModelLoadError(
                f"checkpoint {source} has key {name!r} both with and without 'module.'"
            )
        state[name] = value
    return state


def rename_old_layer_norms(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old BERT ports' ``LayerNorm.gamma``/``beta`` are ``weight``/``bias`` today."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"(LayerNorm)\.gamma$", r"\1.weight", key)
        key = re.sub(r"(LayerNorm)\.beta$", r"\1.bias", key)
        renamed[key] = value
    return renamed


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """``load_state_dict(strict=True)``, but with one readable error for every mismatch.

    Keys that name a buffer of the model (e.g. BERT's ``position_ids``, which
    older transformers saved) are dropped: buffers are rebuilt, not learnt.
    """
    expected = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in state if k not in expected and k not in buffers)
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {name_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model): {name_list(mismatched)}")
    if problems:
        raise ModelLoadError(
            f"checkpoint {path} does not fit {type(model).__name__}; " + "; ".join(problems)
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
