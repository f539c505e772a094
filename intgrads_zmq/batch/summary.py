"""The numbers of ``summary.json``, computed from the rows alone.

Everything here reads rows as the journal holds them, so a summary can be
rebuilt from any output folder (``intgrads-batch ... --summary-only``) and
tested on hand-made rows. Replies for one target carry scalars
(``completeness_error``) and one attribution list; ``target: "all"`` replies
carry one value / list per class, in class order: both shapes are read.

Distributions are given as count, mean, min, p10, median, p90, p99, max
(quantiles interpolated linearly between order statistics, as numpy's
default). "Top tokens" rank each token (or word, when the rows carry words)
by its mean attribution over its occurrences, per explained class, among
tokens seen at least ``min_count`` times; special tokens (``[CLS]``,
``<sep>``, words without a span) are left out.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from .rows import is_error, label_matches

METRIC_NAMES = ("comprehensiveness", "sufficiency", "log_odds")
_SPECIAL = re.compile(r"^(\[[A-Za-z_]+\]|<[A-Za-z_/|]+>|</s>)$")


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated linearly."""
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: Iterable[Any]) -> dict[str, Any] | None:
    """count / mean / min / p10 / median / p90 / p99 / max of the finite numbers given."""
    numbers = sorted(float(v) for v in values if _number(v) and math.isfinite(v))
    if not numbers:
        return None
    return {"count": len(numbers), "mean": math.fsum(numbers) / len(numbers), "min": numbers[0],
            "p10": quantile(numbers, 0.10), "median": quantile(numbers, 0.5),
            "p90": quantile(numbers, 0.90), "p99": quantile(numbers, 0.99), "max": numbers[-1]}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def per_class_values(value: Any) -> list[Any]:
    """A reply value as a list: itself for ``target: "all"`` (one per class), else [value]."""
    return value if isinstance(value, list) else [value]


def explained_classes(row: dict[str, Any]) -> list[str]:
    """The names of the functions a row explains: its target label(s), with the contrast."""
    targets = per_class_values(row.get("target_label", row.get("target")))
    contrast = row.get("contrast_label", row.get("contrast"))
    suffix = f" vs {contrast}" if contrast is not None and not isinstance(row.get("target_label"), list) else ""
    return [f"{t}{suffix}" for t in targets]


def metric_values(row: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """Each faithfulness metric's values in a row, with the class each one is for."""
    metrics = row.get("metrics")
    if metrics is None:
        return {}
    results = metrics if isinstance(metrics, list) else [metrics]
    classes = explained_classes(row)
    out: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for index, result in enumerate(results):
        if not isinstance(result, dict):
            continue
        name_of_class = classes[index] if index < len(classes) else str(index)
        for name in METRIC_NAMES:
            value = result.get(name)
            if _number(value) and math.isfinite(value):
                out[name].append((name_of_class, float(value)))
    return out


def units(row: dict[str, Any]) -> tuple[str, list[str], list[list[float]], list[bool]]:
    """("words" | "tokens", the units, one attribution list per class, which are special)."""
    if isinstance(row.get("words"), list) and isinstance(row.get("word_attributions"), list):
        names = row["words"]
        scores = row["word_attributions"]
        spans = row.get("word_spans")
        special = [isinstance(spans, list) and i < len(spans) and spans[i] is None for i in range(len(names))]
        kind = "words"
    else:
        names = row.get("tokens") or []
        scores = row.get("attributions") or []
        special = [bool(_SPECIAL.match(str(t))) for t in names]
        kind = "tokens"
    per_class = scores if scores and isinstance(scores[0], list) else [scores]
    return kind, [str(n) for n in names], per_class, special


def top_units(rows: list[dict[str, Any]], *, top_k: int = 10, min_count: int = 2) -> dict[str, Any]:
    """Per explained class: the units with the largest and the smallest mean attribution."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    kinds = Counter()
    for row in rows:
        kind, names, per_class, special = units(row)
        kinds[kind] += 1
        for cls, scores in zip(explained_classes(row), per_class, strict=False):
            for name, score, skip in zip(names, scores, special, strict=False):
                if not skip and _number(score):
                    sums[cls][name].append(float(score))
    classes = {}
    for cls in sorted(sums):
        means = [(math.fsum(v) / len(v), len(v), name) for name, v in sums[cls].items() if len(v) >= min_count]
        ranked = sorted(means, key=lambda item: (-item[0], item[2]))
        entry = lambda item: {"unit": item[2], "mean": item[0], "count": item[1]}  # noqa: E731
        classes[cls] = {"top": [entry(i) for i in ranked[:top_k]],
                        "bottom": [entry(i) for i in reversed(ranked[-top_k:])] if ranked else []}
    return {"unit": kinds.most_common(1)[0][0] if kinds else "tokens", "min_count": min_count, "classes": classes}


def accuracy(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, Any] | None:
    """Predictions (arg-max probability) against the gold labels, with a confusion table."""
    labelled = [r for r in rows if r.get("label") is not None and r.get("predicted") is not None]
    if not labelled:
        return None
    confusion: dict[str, Counter] = defaultdict(Counter)
    per_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    correct = 0
    for row in labelled:
        ok = label_matches(row["label"], row["predicted"], labels)
        correct += ok
        gold = _label_name(row["label"], labels)
        predicted = row.get("predicted_label", str(row["predicted"]))
        confusion[gold][str(predicted)] += 1
        per_class[gold][0] += 1
        per_class[gold][1] += ok
    return {"labelled": len(labelled), "correct": correct, "accuracy": correct / len(labelled),
            "per_class": {k: {"count": n, "correct": c, "accuracy": c / n} for k, (n, c) in sorted(per_class.items())},
            "confusion": {k: dict(sorted(v.items())) for k, v in sorted(confusion.items())}}


def _label_name(label: Any, labels: list[str]) -> str:
    """A gold label as a class name where it is an index of one."""
    text = str(label).strip()
    if text not in labels and text.isdigit() and int(text) < len(labels):
        return labels[int(text)]
    return text


def slowest(rows: list[dict[str, Any]], count: int = 10) -> list[dict[str, Any]]:
    """The examples that took longest (wall time of the request, as the client saw it)."""
    timed = [r for r in rows if _number((r.get("timings") or {}).get("request_seconds"))]
    timed.sort(key=lambda r: -r["timings"]["request_seconds"])
    out = []
    for row in timed[:count]:
        timings = row["timings"]
        out.append({"id": row["id"], "request_seconds": timings["request_seconds"],
                    "compute_seconds": timings.get("compute_seconds"), "tokens": len(row.get("tokens") or []),
                    "steps_used": row.get("steps_used"), "text": _preview(row.get("text", ""))})
    return out


def _preview(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flat(rows: list[dict[str, Any]], key: str) -> list[Any]:
    return [v for r in rows for v in per_class_values(r.get(key))]


def summarize(rows: list[dict[str, Any]], *, labels: list[str] | None = None, top_k: int = 10,
              min_count: int = 2, slow: int = 10) -> dict[str, Any]:
    """Everything summary.json holds, from the journal's rows."""
    ok = [r for r in rows if not is_error(r)]
    failed = [r for r in rows if is_error(r)]
    if labels is None:
        labels = next((r["labels"] for r in ok if isinstance(r.get("labels"), list)), [])
    errors = Counter(f"{r['error'].get('status')} {r['error'].get('code')}" for r in failed)
    steps = [r.get("steps_used") for r in ok if _number(r.get("steps_used"))]
    metrics: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for row in ok:
        for name, values in metric_values(row).items():
            metrics[name].extend(values)
    out: dict[str, Any] = {
        "examples": len(rows), "ok": len(ok), "failed": len(failed),
        "errors": dict(errors.most_common()),
        "failed_ids": [r["id"] for r in failed][:100],
        "labels": labels,
        "completeness_error": distribution(_flat(ok, "completeness_error")),
        "relative_completeness_error": distribution(_flat(ok, "relative_completeness_error")),
        "steps_used": None if not steps else {**(distribution(steps) or {}),
                                               "counts": {str(k): n for k, n in sorted(Counter(steps).items())}},
        "metrics": {name: {**(distribution(v for _, v in values) or {}),
                           "by_class": {cls: distribution(x for c, x in values if c == cls)
                                        for cls in sorted({c for c, _ in values})}}
                    for name, values in sorted(metrics.items())},
        "predicted": dict(sorted(Counter(str(r.get("predicted_label", r.get("predicted"))) for r in ok
                                         if r.get("predicted") is not None).items())),
        "accuracy": accuracy(ok, labels),
        "top": top_units(ok, top_k=top_k, min_count=min_count),
        "slowest": slowest(ok, slow),
        "timings": {"request_seconds": distribution((r.get("timings") or {}).get("request_seconds") for r in ok),
                    "compute_seconds": distribution((r.get("timings") or {}).get("compute_seconds") for r in ok)},
    }
    converged = [c for r in ok for c in per_class_values(r.get("converged")) if isinstance(c, bool)]
    if converged:
        out["converged"] = {"true": sum(converged), "false": len(converged) - sum(converged)}
    return out
