"""The row written for one example: what the server said about it, or its error.

A row copies the reply's metadata as it comes (so keys a newer server adds,
``words``, ``word_attributions``, ``metrics``, ..., reach the output without
a change here) minus the bulky per-step diagnostics, and adds what the
runner knows: the example's id, text and label, the predicted class, whether
it matches the label, the steps used and the client-side timing.
"""

from __future__ import annotations

from typing import Any

from .inputs import Example
from .transport import Failure

# Reply keys left out of rows: per-step lists (as long as n_steps) and the
# tensors object of a JSON reply; the safetensors shards keep tensors.
DROPPED_KEYS = frozenset({"tensors", "alphas", "path_integrand", "step_sizes"})


def example_fields(example: Example) -> dict[str, Any]:
    row: dict[str, Any] = {"id": example.id, "text": example.text}
    if example.label is not None:
        row["label"] = example.label
    return row


def ok_row(example: Example, meta: dict[str, Any], *, request_seconds: float, attempts: int) -> dict[str, Any]:
    """The row of an example the server explained."""
    row = example_fields(example)
    for key, value in meta.items():
        if key not in DROPPED_KEYS and key not in row:
            row[key] = value
    predicted = predicted_index(meta.get("probabilities"))
    labels = meta.get("labels")
    if predicted is not None:
        row["predicted"] = predicted
        if isinstance(labels, list) and predicted < len(labels):
            row["predicted_label"] = labels[predicted]
    if example.label is not None and predicted is not None:
        row["correct"] = label_matches(example.label, predicted, labels if isinstance(labels, list) else [])
    row["steps_used"] = meta.get("n_steps")
    timings = dict(meta.get("timings") or {})
    timings["request_seconds"] = round(request_seconds, 6)
    row["timings"] = timings
    row["attempts"] = attempts
    return row


def error_row(example: Example, failure: Failure, *, attempts: int) -> dict[str, Any]:
    """The row of an example the server refused or failed on; the run goes on."""
    row = example_fields(example)
    row["error"] = failure.to_dict()
    row["attempts"] = attempts
    return row


def predicted_index(probabilities: Any) -> int | None:
    """The arg-max class (the first of ties), or None without probabilities."""
    if not isinstance(probabilities, list) or not probabilities:
        return None
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in probabilities):
        return None
    return max(range(len(probabilities)), key=lambda i: (probabilities[i], -i))


def label_matches(label: int | str, predicted: int, labels: list[Any]) -> bool:
    """A gold label matches the prediction by name, or as a class index
    (an int, or a string of digits that names no label, as CSV labels are)."""
    if isinstance(label, str):
        if label in labels:
            return labels.index(label) == predicted
        stripped = label.strip()
        if stripped in labels:
            return labels.index(stripped) == predicted
        return stripped.isdigit() and int(stripped) == predicted
    return label == predicted


def is_error(row: dict[str, Any]) -> bool:
    return "error" in row
