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

Files are read by :mod:`.state_dicts` (weights only, never running code) and
tokenizers built by :mod:`.tokenizers`; this module rebuilds the configs from
the tensor shapes and holds the old BERT head. Nothing here keeps global
state; the loaders may run in any process.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    PreTrainedTokenizerBase,
    XLNetConfig,
    XLNetForSequenceClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from intgrads_zmq.errors import ModelLoadError

from .base import freeze
from .state_dicts import PathLike, load_strict, read_state_dict, rename_old_layer_norms
from .tokenizers import load_tokenizer

logger = logging.getLogger(__name__)

# Shapes of the released XLNet checkpoints; tensors in the file override them.
XLNET_PRESETS: dict[str, dict[str, int]] = {
    "base": {"d_model": 768, "n_layer": 12, "n_head": 12, "d_inner": 3072, "vocab_size": 32000},
    "large": {"d_model": 1024, "n_layer": 24, "n_head": 16, "d_inner": 4096, "vocab_size": 32000},
}


def _labels(num_labels: int) -> tuple[dict[int, str], dict[str, int]]:
    """Label names: the original models are binary sentiment classifiers."""
    if num_labels == 2:
        id2label = {0: "negative", 1: "positive"}
    else:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    return id2label, {name: i for i, name in id2label.items()}


# --------------------------------------------------------------------------
# Configs from tensor shapes


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
    state = rename_old_layer_norms(read_state_dict(path))
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


def _finish(
    model: Any,
    state: dict[str, torch.Tensor],
    path: PathLike,
    tokenizer_dir: PathLike | None,
    family: Literal["bert", "xlnet"],
) -> tuple[Any, PreTrainedTokenizerBase | None]:
    """Load the weights strictly, freeze, and pair the model with its tokenizer."""
    load_strict(model, state, path)
    freeze(model)
    tokenizer = None
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir, family=family, vocab_size=model.config.vocab_size)
    return model, tokenizer
