"""The embedded zero-shot demo model: offline loading, interface, accuracy, gradients."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import pytest
import torch
import transformers

from intgrads_zmq.models.demo import (
    DEMO_LABELS,
    ZeroShotSentimentClassifier,
    load_demo_model,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def demo() -> tuple[ZeroShotSentimentClassifier, transformers.PreTrainedTokenizerBase]:
    return load_demo_model()


def _reviews(name: str) -> list[dict[str, str]]:
    lines = (DATA_DIR / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_labels_and_config(demo) -> None:
    model, _ = demo
    assert DEMO_LABELS == ("negative", "positive")
    assert isinstance(model.bert, transformers.BertModel)
    assert isinstance(model.config, transformers.BertConfig)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert model.config.num_labels == 2
    assert ZeroShotSentimentClassifier.head_reads_cls_only is False


def test_frozen_and_eval(demo) -> None:
    model, _ = demo
    params = list(model.named_parameters())
    assert params, "the BERT weights should be registered parameters"
    assert [name for name, p in params if p.requires_grad] == []
    assert not model.training and not model.bert.training
    assert "label_embeddings" in dict(model.named_buffers())
    norms = model.label_embeddings.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(len(DEMO_LABELS)))


def test_tokenizer_knows_ordinary_words(demo) -> None:
    _, tokenizer = demo
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a great film")["input_ids"])
    assert tokens == ["[CLS]", "a", "great", "film", "[SEP]"]


@torch.no_grad()
def test_forward_matches_classify_hidden(demo) -> None:
    model, tokenizer = demo
    batch = tokenizer(["An absolutely wonderful evening at the cinema."], return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (1, 2)
    hidden = model.bert(**batch).last_hidden_state
    torch.testing.assert_close(logits, model.classify_hidden(hidden))
    # Logits are spread enough that the softmax is not ~0.5 everywhere.
    assert logits.softmax(-1).max() > 0.75


@torch.no_grad()
def test_masked_batch_matches_unpadded(demo) -> None:
    model, tokenizer = demo
    texts = [
        "Dull.",
        "A long, rambling and thoroughly disappointing sequel to a classic.",
        "Lovely film!",
    ]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    padded = model(**batch).logits
    single = torch.cat([model(**tokenizer([text], return_tensors="pt")).logits for text in texts])
    torch.testing.assert_close(padded, single, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_held_out_accuracy(demo) -> None:
    model, tokenizer = demo
    reviews = _reviews("movie_reviews_test.jsonl")
    assert len(reviews) >= 48
    truth = [DEMO_LABELS.index(r["label"]) for r in reviews]
    assert truth.count(0) == truth.count(1)
    batch = tokenizer([r["text"] for r in reviews], padding=True, return_tensors="pt")
    pred = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    accuracy = (pred == torch.tensor(truth)).float().mean().item()
    print(f"held-out accuracy: {accuracy:.3f} on {len(reviews)} reviews")
    assert accuracy >= 0.85


def test_tune_and_test_sets_are_disjoint() -> None:
    tune = {r["text"].lower() for r in _reviews("movie_reviews_tune.jsonl")}
    test = {r["text"].lower() for r in _reviews("movie_reviews_test.jsonl")}
    assert tune and not tune & test


def test_gradient_reaches_embeddings_output(demo) -> None:
    model, tokenizer = demo
    captured: list[torch.Tensor] = []

    def make_leaf(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    handle = model.bert.embeddings.register_forward_hook(make_leaf)
    try:
        batch = tokenizer(["The acting was superb."], return_tensors="pt")
        logits = model(**batch).logits
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[0, 1], captured[0])
    assert grad.shape == captured[0].shape
    assert torch.isfinite(grad).all()
    # Mean pooling: every position, not only [CLS], influences the logit.
    assert (grad.abs().sum(dim=-1) > 0).all()
