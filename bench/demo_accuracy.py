"""Accuracy and confusion matrix of the zero-shot demo model on the review sets.

The demo classifier has no trained weights, only hand-written label
descriptions; this script is how those descriptions were judged (on the
tuning set) and how their generalisation is reported (on the held-out set).

Run from the repository root:  python -m bench.demo_accuracy [--set tune|test|both]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from intgrads_zmq.models.demo import DEMO_LABELS, load_demo_model

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
SETS = {
    "tune": DATA_DIR / "movie_reviews_tune.jsonl",
    "test": DATA_DIR / "movie_reviews_test.jsonl",
}


def read_reviews(path: Path) -> list[tuple[str, int]]:
    """``(text, label index)`` pairs from a JSON-lines file of ``{"text", "label"}``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(row["text"], DEMO_LABELS.index(row["label"])) for row in rows]


@torch.no_grad()
def predict(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> list[int]:
    """Predicted label indices; one padded batch, the model masks the padding."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits.argmax(dim=-1).tolist()


def report(
    name: str, truth: list[int], pred: list[int], texts: list[str], show_errors: bool
) -> None:
    """Print accuracy, a confusion matrix (rows: true label) and optionally the misses."""
    n = len(DEMO_LABELS)
    matrix = [[0] * n for _ in range(n)]
    for t, p in zip(truth, pred, strict=True):
        matrix[t][p] += 1
    correct = sum(matrix[i][i] for i in range(n))
    print(f"{name}: accuracy {correct}/{len(truth)} = {correct / len(truth):.3f}")
    width = max(len(label) for label in DEMO_LABELS) + 2
    print(" " * (width + 5) + "predicted")
    print("true".ljust(width + 5) + "".join(label.rjust(width) for label in DEMO_LABELS))
    for label, row in zip(DEMO_LABELS, matrix, strict=True):
        print("     " + label.ljust(width) + "".join(str(c).rjust(width) for c in row))
    if show_errors:
        for text, t, p in zip(texts, truth, pred, strict=True):
            if t != p:
                print(f"  miss ({DEMO_LABELS[t]} -> {DEMO_LABELS[p]}): {text}")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("tune", "test", "both"), default="both")
    parser.add_argument("--errors", action="store_true", help="list misclassified reviews")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model, tokenizer = load_demo_model()
    print(f"model loaded in {time.perf_counter() - start:.2f} s\n")
    for name in ("tune", "test") if args.set == "both" else (args.set,):
        reviews = read_reviews(SETS[name])
        texts = [text for text, _ in reviews]
        report(
            name,
            [label for _, label in reviews],
            predict(model, tokenizer, texts),
            texts,
            args.errors,
        )


if __name__ == "__main__":
    main()
