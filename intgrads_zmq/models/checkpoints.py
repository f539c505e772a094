"""Loaders for the original int-gradients-server's checkpoint files.

The original server took bare ``state_dict`` files (``-bp``, ``-xlb``, ``-xll``)
and fetched its config and tokenizer from the model hub. We have no hub, so the
architecture is read back from the tensor shapes and the tokenizer comes from a
folder the user names.

* BERT (``-bp``) was trained with an old, pre-Hugging-Face BERT port: its
  LayerNorms are named ``gamma``/``beta`` and its head reads the last layer's
  [CLS] state directly (the pooler is saved but never used). We rename the
  LayerNorm keys, load the body into ``transformers.BertModel`` (the maths is
  the same: erf GELU, eps 1e-12 inside the square root, additive padding mask)
  and keep the old head in :class:`OriginalBertClassifier`.
* XLNet (``-xlb``/``-xll``) is a Hugging Face ``XLNetForSequenceClassification``
  state dict saved through ``DataParallel`` (keys start with ``module.``). The
  parameter names are unchanged in transformers 5, but the original code ran
  XLNet's feed-forward with the tanh-approximate GELU (transformers 2.x mapped
  ``"gelu"`` to ``gelu_new`` for XLNet; transformers 5 maps it to the erf form),
  so we set ``ff_activation="gelu_new"`` to reproduce its logits.

Checkpoints are untrusted input: they are read with ``weights_only=True`` only,
so a file that would run code while unpickling is refused, never executed.
Nothing here keeps global state; the loaders may run in any process.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import AddedToken
from torch import nn
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizer,
    PreTrainedTokenizerBase,
    XLNetConfig,
    XLNetForSequenceClassification,
    XLNetTokenizer,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from intgrads_zmq.errors import ModelLoadError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

_WRAPPER_KEYS = ("state_dict", "model_state_dict")
_DATA_PARALLEL_PREFIX = "module."
_LISTED_KEYS = 8  # how many offending key names an error message spells out

# Shapes of the released XLNet checkpoints; tensors in the file override them.
XLNET_PRESETS: dict[str, dict[str, int]] = {
    "base": {"d_model": 768, "n_layer": 12, "n_head": 12, "d_inner": 3072, "vocab_size": 32000},
    "large": {"d_model": 1024, "n_layer": 24, "n_head": 16, "d_inner": 4096, "vocab_size": 32000},
}

# A few common words: a working English tokenizer maps at least one of them to
# a real token. transformers 5 silently turns every token into the unknown
# token when a vocabulary is passed the old way, and this catches that.
_TOKENIZER_PROBE = "the a and of"


def _labels(num_labels: int) -> tuple[dict[int, str], dict[str, int]]:
    """Label names: the original models are binary sentiment classifiers."""
    if num_labels == 2:
        id2label = {0: "negative", 1: "positive"}
    else:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    return id2label, {name: i for i, name in id2label.items()}


def _short(exc: BaseException) -> str:
    """One line of an exception's text, for error messages that stay readable."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _name_list(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED_KEYS])
    rest = len(names) - _LISTED_KEYS
    return shown + (f" ... and {rest} more" if rest > 0 else "")


# --------------------------------------------------------------------------
# Reading the file


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
    reason = detail[0] if detail and "WeightsUnpickler error:" in text else _short(exc)
    return (
        f"checkpoint {path} was refused: the safe (weights-only) reader cannot parse it, so it "
        f"is either not a PyTorch checkpoint or holds objects whose loading would execute code "
        f"({reason})"
    )


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
    if not source.is_file():
        what = "is a directory, not a file" if source.is_dir() else "does not exist"
        raise ModelLoadError(f"checkpoint {source} {what}")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise ModelLoadError(_refusal_message(source, exc)) from None
        raise ModelLoadError(
            f"checkpoint {source} is not a readable PyTorch file: {_short(exc)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign format, I/O error, ...
        raise ModelLoadError(
            f"checkpoint {source} is not a readable PyTorch file: "
            f"{type(exc).__name__}: {_short(exc)}"
        ) from None

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
            f"{_name_list(not_tensors)}"
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


# --------------------------------------------------------------------------
# Shared helpers


def _tensor(
    state: Mapping[str, torch.Tensor], key: str, ndim: int, path: PathLike, model: str
) -> torch.Tensor:
    """The tensor the config is read from; its absence means a wrong file."""
    value = state.get(key)
    if value is None:
        raise ModelLoadError(
            f"checkpoint {path} has no {key!r}; is it really a {model} checkpoint?"
        )
    if value.dim() != ndim:
        raise ModelLoadError(
            f"checkpoint {path}: {key!r} has shape {tuple(value.shape)}, expected {ndim} dims"
        )
    return value


def _count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: PathLike) -> None:
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
        problems.append(f"missing keys: {_name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_name_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model): {_name_list(mismatched)}")
    if problems:
        raise ModelLoadError(
            f"checkpoint {path} does not fit {type(model).__name__}; " + "; ".join(problems)
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)


def _freeze(model: nn.Module) -> None:
    """Inference only: dropout off, and no parameter gradients (IG needs input grads only)."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


# --------------------------------------------------------------------------
# BERT


class OriginalBertClassifier(nn.Module):
    """BERT body plus the old port's head: a linear layer on the last [CLS] state.

    Unlike Hugging Face's ``BertForSequenceClassification`` the pooler is not
    used; it exists only so the checkpoint's pooler weights load strictly.
    """

    head_reads_cls_only = True

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def get_input_embeddings(self) -> nn.Module:
        """The word-embedding table, as Hugging Face models expose it."""
        return self.bert.get_input_embeddings()

    def classify_hidden(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """Logits from the last layer's hidden states ``(batch, seq, hidden)``."""
        return self.classifier(self.dropout(last_hidden_state[:, 0]))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Classify; ``inputs_embeds`` (word embeddings only) replaces ``input_ids``."""
        body = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        return SequenceClassifierOutput(logits=self.classify_hidden(body.last_hidden_state))


def _bert_config(
    state: Mapping[str, torch.Tensor], path: PathLike, num_attention_heads: int | None
) -> BertConfig:
    """Rebuild the BERT config from tensor shapes (the file carries no config)."""

    def rows_cols(key: str) -> tuple[int, int]:
        rows, cols = _tensor(state, key, 2, path, "BERT").shape
        return rows, cols

    vocab, hidden = rows_cols("bert.embeddings.word_embeddings.weight")
    positions, _ = rows_cols("bert.embeddings.position_embeddings.weight")
    types, _ = rows_cols("bert.embeddings.token_type_embeddings.weight")
    intermediate, _ = rows_cols("bert.encoder.layer.0.intermediate.dense.weight")
    num_labels, _ = rows_cols("classifier.weight")
    layers = _count_layers(state, "bert.encoder.layer.")
    # Head count is not visible in the weights; BERT's heads are 64 wide.
    heads = num_attention_heads or hidden // 64
    if heads <= 0 or hidden % heads:
        raise ModelLoadError(
            f"checkpoint {path}: hidden size {hidden} cannot be split into {heads} attention heads; "
            "pass num_attention_heads"
        )
    id2label, label2id = _labels(num_labels)
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act="gelu",
        max_position_embeddings=positions,
        type_vocab_size=types,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        num_labels=num_labels,
        id2label=id2label,
        label2id=label2id,
    )


def _rename_old_bert_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The old port's ``LayerNorm.gamma``/``beta`` are ``weight``/``bias`` today."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"(LayerNorm)\.gamma$", r"\1.weight", key)
        key = re.sub(r"(LayerNorm)\.beta$", r"\1.bias", key)
        renamed[key] = value
    return renamed


def load_original_bert(
    path: PathLike,
    tokenizer_dir: PathLike | None = None,
    *,
    num_attention_heads: int | None = None,
) -> tuple[OriginalBertClassifier, PreTrainedTokenizerBase | None]:
    """Load a ``-bp`` checkpoint: frozen model in eval mode, plus its tokenizer if a folder is given.

    Args:
        path: the ``torch.save(model.state_dict())`` file of the old BERT port.
        tokenizer_dir: folder with ``tokenizer.json`` or just ``vocab.txt``
            (uncased WordPiece, as the original used).
        num_attention_heads: head count; defaults to ``hidden_size // 64``.

    Raises:
        ModelLoadError: unreadable file, wrong architecture, or bad tokenizer.
    """
    state = _rename_old_bert_keys(read_state_dict(path))
    config = _bert_config(state, path, num_attention_heads)
    return _finish(OriginalBertClassifier(config), state, path, tokenizer_dir, "bert")


# --------------------------------------------------------------------------
# XLNet


def _xlnet_config(state: Mapping[str, torch.Tensor], path: PathLike, size: str) -> XLNetConfig:
    """Preset by size, then overridden by every shape the file shows."""
    if size not in XLNET_PRESETS:
        raise ModelLoadError(
            f"unknown XLNet size {size!r}; expected one of {sorted(XLNET_PRESETS)}"
        )
    dims = dict(XLNET_PRESETS[size])
    num_labels = 2
    if (word := state.get("transformer.word_embedding.weight")) is not None and word.dim() == 2:
        dims["vocab_size"], dims["d_model"] = word.shape
    if (query := state.get("transformer.layer.0.rel_attn.q")) is not None and query.dim() == 3:
        dims["n_head"] = query.shape[1]
    if (ff := state.get("transformer.layer.0.ff.layer_1.weight")) is not None and ff.dim() == 2:
        dims["d_inner"] = ff.shape[0]
    if layers := _count_layers(state, "transformer.layer."):
        dims["n_layer"] = layers
    if (proj := state.get("logits_proj.weight")) is not None and proj.dim() == 2:
        num_labels = proj.shape[0]
    if (
        dims["d_model"] != XLNET_PRESETS[size]["d_model"]
        or dims["n_layer"] != XLNET_PRESETS[size]["n_layer"]
    ):
        logger.warning(
            "checkpoint %s does not look like XLNet-%s; using its own shapes %s", path, size, dims
        )
    if dims["d_model"] % dims["n_head"]:
        raise ModelLoadError(
            f"checkpoint {path}: d_model {dims['d_model']} is not a multiple of n_head {dims['n_head']}"
        )
    id2label, label2id = _labels(num_labels)
    return XLNetConfig(
        **dims,
        ff_activation="gelu_new",  # what the original (transformers 2.x) XLNet computed
        layer_norm_eps=1e-12,
        mem_len=None,
        use_mems_eval=False,
        use_mems_train=False,
        num_labels=num_labels,
        id2label=id2label,
        label2id=label2id,
    )


def load_original_xlnet(
    path: PathLike,
    tokenizer_dir: PathLike | None = None,
    *,
    size: str = "base",
) -> tuple[XLNetForSequenceClassification, PreTrainedTokenizerBase | None]:
    """Load a ``-xlb`` (``size="base"``) or ``-xll`` (``size="large"``) checkpoint.

    Args:
        path: the ``XLNetForSequenceClassification`` state dict (``module.`` keys).
        tokenizer_dir: folder with ``tokenizer.json`` or just ``spiece.model``.
        size: which preset to start from; shapes in the file take precedence.

    Raises:
        ModelLoadError: unreadable file, wrong architecture, or bad tokenizer.
    """
    state = read_state_dict(path)
    config = _xlnet_config(state, path, size)
    return _finish(XLNetForSequenceClassification(config), state, path, tokenizer_dir, "xlnet")


# --------------------------------------------------------------------------
# Tokenizers


def _proto_fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(field, wire_type, value)`` of one protobuf message.

    Just enough protobuf to read a SentencePiece model: transformers 5 needs
    the ``protobuf`` package for that, which this project does not install.
    """

    def varint(pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            byte = data[pos]
            result |= (byte & 0x7F) << shift
            pos += 1
            if byte < 0x80:
                return result, pos
            shift += 7

    pos = 0
    while pos < len(data):
        key, pos = varint(pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = varint(pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _xlnet_tokenizer_from_spiece(model_file: Path, settings: Mapping[str, Any]) -> XLNetTokenizer:
    """Build XLNet's fast tokenizer from ``spiece.model`` the way transformers' converter does.

    Reads the pieces and scores, the unknown id, the normalisation table and
    which pieces are control (special) or user-defined symbols.
    """
    pieces: list[tuple[str, float, int]] = []
    unk_id, charsmap = 0, None
    for field, wire, value in _proto_fields(model_file.read_bytes()):
        if field == 1 and wire == 2:  # ModelProto.pieces
            piece, score, kind = "", 0.0, 1
            for f, w, v in _proto_fields(value):
                if f == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif f == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif f == 3 and w == 0:
                    kind = v
            pieces.append((piece, score, kind))
        elif field == 2 and wire == 2:  # ModelProto.trainer_spec
            unk_id = next((v for f, w, v in _proto_fields(value) if f == 40 and w == 0), unk_id)
        elif field == 3 and wire == 2:  # ModelProto.normalizer_spec
            charsmap = (
                next((v for f, w, v in _proto_fields(value) if f == 2 and w == 2), None) or None
            )
    if not pieces:
        raise ModelLoadError(f"{model_file} holds no SentencePiece vocabulary")
    control, user_defined = 3, 4  # SentencePiece.Type values
    added = [
        AddedToken(p, normalized=False, special=k == control)
        for p, _, k in pieces
        if k in (control, user_defined)
    ]
    return XLNetTokenizer(
        vocab=[(p, s) for p, s, _ in pieces],
        unk_id=unk_id,
        do_lower_case=bool(settings.get("do_lower_case", False)),
        keep_accents=bool(settings.get("keep_accents", False)),
        _spm_precompiled_charsmap=charsmap,
        additional_special_tokens=added or None,
    )


def _check_tokenizer(
    tokenizer: PreTrainedTokenizerBase, directory: Path, vocab_size: int | None
) -> None:
    """Refuse tokenizers that cannot serve the model: too large, or all-unknown."""
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ModelLoadError(
            f"tokenizer in {directory} has {len(tokenizer)} tokens but the model's embedding has only "
            f"{vocab_size} rows; is it the tokenizer of another model?"
        )
    unk = tokenizer.unk_token_id
    ids = tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    if unk is not None and all(i == unk for i in ids):
        raise ModelLoadError(
            f"tokenizer in {directory} maps every word of {_TOKENIZER_PROBE!r} to {tokenizer.unk_token}"
        )


def load_tokenizer(
    directory: PathLike,
    *,
    family: Literal["bert", "xlnet"],
    vocab_size: int | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder, with no hub access.

    ``tokenizer.json`` wins when present (through ``AutoTokenizer``). Otherwise
    the legacy single-file vocabularies are built directly, because
    ``AutoTokenizer`` in transformers 5 fails on them (or, for a folder with a
    ``tokenizer_config.json`` and ``vocab.txt``, silently yields all-[UNK]):
    ``vocab.txt`` for BERT (lower-cased unless ``tokenizer_config.json`` says
    otherwise) and ``spiece.model`` for XLNet.

    Raises:
        ModelLoadError: the folder is missing, holds no usable tokenizer, or
            the tokenizer does not fit a model with ``vocab_size`` rows.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ModelLoadError(f"tokenizer directory {folder} does not exist")
    settings: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        try:
            settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"{folder / 'tokenizer_config.json'} is not valid JSON: {_short(exc)}"
            ) from None
    legacy = folder / ("vocab.txt" if family == "bert" else "spiece.model")
    try:
        if (folder / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        elif legacy.is_file() and family == "bert":
            tokenizer = BertTokenizer(
                vocab=str(legacy), do_lower_case=bool(settings.get("do_lower_case", True))
            )
        elif legacy.is_file():
            tokenizer = _xlnet_tokenizer_from_spiece(legacy, settings)
        else:
            raise ModelLoadError(
                f"tokenizer directory {folder} holds neither tokenizer.json nor {legacy.name}"
            )
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad folder
        raise ModelLoadError(f"tokenizer in {folder} could not be loaded: {_short(exc)}") from None
    _check_tokenizer(tokenizer, folder, vocab_size)
    return tokenizer


def _finish(model: Any, state: dict[str, torch.Tensor], path: str | os.PathLike[str],
            tokenizer_dir: str | os.PathLike[str] | None, family: str) -> tuple[Any, Any]:
    """Load the weights strictly, freeze, and pair the model with its tokenizer."""
    _load_strict(model, state, path)
    _freeze(model)
    tokenizer = None
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir, family=family, vocab_size=model.config.vocab_size)
    return model, tokenizer
