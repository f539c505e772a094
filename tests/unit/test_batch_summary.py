"""summary.json's numbers on hand-made rows (expected values worked out by hand
in the comments), for single-target rows and for target "all" / words /
contrast rows."""

from __future__ import annotations

import pytest

from intgrads_zmq.batch.inputs import Example
from intgrads_zmq.batch.rows import label_matches, ok_row, predicted_index
from intgrads_zmq.batch.summary import distribution, quantile, summarize

EPS = 1.19e-7  # float32 eps; the summary computes in float64 on values of order 1


def row(i, label, probs, target, tokens, attrs, ce, rel, steps, request, compute, metrics=None):
    labels = ["negative", "positive"]
    out = {"id": i, "text": " ".join(tokens[1:-1]), "labels": labels, "probabilities": probs,
           "predicted": probs.index(max(probs)), "predicted_label": labels[probs.index(max(probs))],
           "target": target, "target_label": labels[target], "tokens": tokens, "attributions": attrs,
           "completeness_error": ce, "relative_completeness_error": rel, "steps_used": steps,
           "timings": {"request_seconds": request, "compute_seconds": compute}}
    if label is not None:
        out["label"] = label
    if metrics:
        out["metrics"] = dict(zip(("comprehensiveness", "sufficiency", "log_odds"), metrics, strict=True))
    return out


ROWS = [
    row(1, "positive", [0.2, 0.8], 1, ["[CLS]", "great", "film", "[SEP]"], [0.5, 0.4, 0.1, -0.2],
        0.001, 0.01, 8, 0.5, 0.4, (0.3, 0.1, -1.0)),
    row(2, "negative", [0.6, 0.4], 0, ["[CLS]", "dull", "film", "[SEP]"], [0.0, 0.6, 0.2, 0.0],
        0.003, 0.03, 16, 2.0, 1.5, (0.5, 0.3, -2.0)),
    row(3, "negative", [0.3, 0.7], 1, ["[CLS]", "great", "great", "[SEP]"], [0.1, 0.2, 0.3, 0.0],
        0.002, 0.02, 8, 1.0, 0.9, (0.1, 0.2, -3.0)),
    {"id": 4, "text": "", "label": "positive", "error": {"status": 400, "code": "bad_request", "field": "sequence"}},
    row(5, None, [0.9, 0.1], 0, ["[CLS]", "film", "[SEP]"], [0.0, 0.4, 0.0], 0.004, None, 32, 0.25, 0.2),
]


def close(a, b):
    return abs(a - b) <= 8 * EPS * max(1.0, abs(b))


def test_quantiles_interpolate_linearly():
    assert quantile([1.0], 0.9) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert close(quantile([0.0, 10.0, 20.0], 0.9), 18.0)  # position 1.8
    assert distribution([]) is None and distribution([None, float("nan"), True]) is None


def test_counts_errors_and_distributions():
    s = summarize(ROWS)
    assert (s["examples"], s["ok"], s["failed"]) == (5, 4, 1)
    assert s["errors"] == {"400 bad_request": 1} and s["failed_ids"] == [4]
    assert s["labels"] == ["negative", "positive"]
    ce = s["completeness_error"]  # 0.001 0.002 0.003 0.004
    assert ce["count"] == 4 and close(ce["mean"], 0.0025) and close(ce["median"], 0.0025)
    assert close(ce["p10"], 0.0013) and close(ce["p90"], 0.0037) and ce["max"] == 0.004 and ce["min"] == 0.001
    rel = s["relative_completeness_error"]  # the None of row 5 is left out
    assert rel["count"] == 3 and close(rel["mean"], 0.02)
    steps = s["steps_used"]  # 8 8 16 32
    assert steps["counts"] == {"8": 2, "16": 1, "32": 1} and steps["mean"] == 16 and steps["median"] == 12
    assert s["predicted"] == {"negative": 2, "positive": 2}
    assert s["timings"]["request_seconds"]["max"] == 2.0 and close(s["timings"]["compute_seconds"]["mean"], 0.75)


def test_metrics_per_class():
    metrics = summarize(ROWS)["metrics"]
    assert sorted(metrics) == ["comprehensiveness", "log_odds", "sufficiency"]
    comp = metrics["comprehensiveness"]  # 0.3 (positive), 0.5 (negative), 0.1 (positive)
    assert comp["count"] == 3 and close(comp["mean"], 0.3) and close(comp["median"], 0.3)
    assert close(comp["by_class"]["positive"]["mean"], 0.2) and comp["by_class"]["negative"]["count"] == 1
    assert close(metrics["log_odds"]["mean"], -2.0)


def test_accuracy_against_labels():
    acc = summarize(ROWS)["accuracy"]  # rows 1 (right), 2 (right), 3 (wrong); 4 failed, 5 unlabelled
    assert (acc["labelled"], acc["correct"]) == (3, 2) and close(acc["accuracy"], 2 / 3)
    assert acc["per_class"] == {"negative": {"count": 2, "correct": 1, "accuracy": 0.5},
                                "positive": {"count": 1, "correct": 1, "accuracy": 1.0}}
    assert acc["confusion"] == {"negative": {"negative": 1, "positive": 1}, "positive": {"positive": 1}}
    assert summarize([r for r in ROWS if "label" not in r or "error" in r])["accuracy"] is None


def test_labels_match_by_name_or_index():
    labels = ["negative", "positive"]
    assert label_matches("positive", 1, labels) and not label_matches("positive", 0, labels)
    assert label_matches(1, 1, labels) and label_matches("1", 1, labels) and label_matches(" positive", 1, labels)
    assert not label_matches("neutral", 1, labels) and not label_matches("0", 1, labels)
    indexed = [{**ROWS[0], "label": "1"}, {**ROWS[1], "label": 0}]
    assert summarize(indexed)["accuracy"]["per_class"] == {
        "negative": {"count": 1, "correct": 1, "accuracy": 1.0}, "positive": {"count": 1, "correct": 1, "accuracy": 1.0}}


def test_top_tokens_per_class():
    top = summarize(ROWS)["top"]  # min_count 2: "great" 0.4 0.2 0.3 (positive); "film" 0.2 0.4 (negative)
    assert top["unit"] == "tokens" and top["min_count"] == 2
    positive = top["classes"]["positive"]["top"]
    assert [(e["unit"], e["count"]) for e in positive] == [("great", 3)] and close(positive[0]["mean"], 0.3)
    negative = top["classes"]["negative"]["top"]
    assert [(e["unit"], e["count"]) for e in negative] == [("film", 2)] and close(negative[0]["mean"], 0.3)
    loose = summarize(ROWS, min_count=1)["top"]["classes"]["positive"]  # special tokens never ranked
    assert [e["unit"] for e in loose["top"]] == ["great", "film"] and [e["unit"] for e in loose["bottom"]] == ["film", "great"]


def test_slowest_examples():
    slowest = summarize(ROWS, slow=2)["slowest"]
    assert [(s["id"], s["request_seconds"], s["tokens"]) for s in slowest] == [(2, 2.0, 4), (3, 1.0, 4)]
    assert slowest[0]["text"] == "dull film" and slowest[0]["steps_used"] == 16


def test_every_class_words_and_metrics_lists():
    """target "all": one value / list per class, in class order; words with null spans are special."""
    every = {"id": 7, "text": "great film", "labels": ["negative", "positive"], "probabilities": [0.3, 0.7],
             "predicted": 1, "target": [0, 1], "target_label": ["negative", "positive"],
             "tokens": ["[CLS]", "great", "film", "[SEP]"],
             "attributions": [[0.0, -0.5, 0.1, 0.0], [0.0, 0.5, -0.1, 0.0]],
             "words": ["[CLS]", "great", "film", "[SEP]"], "word_spans": [None, [0, 5], [6, 10], None],
             "word_attributions": [[9.0, -0.5, 0.1, 9.0], [9.0, 0.5, -0.1, 9.0]],
             "completeness_error": [0.001, 0.003], "steps_used": 8,
             "metrics": [{"comprehensiveness": 0.1, "sufficiency": 0.2, "log_odds": -0.5, "curve": {"x": [1.0]}},
                         {"comprehensiveness": 0.4, "sufficiency": 0.0, "log_odds": -1.5, "seconds": 9.0}],
             "timings": {"request_seconds": 0.1}}
    s = summarize([every, {**every, "id": 8}], min_count=2)
    assert s["completeness_error"]["count"] == 4 and close(s["completeness_error"]["mean"], 0.002)
    assert s["top"]["unit"] == "words"
    assert [(e["unit"], e["mean"]) for e in s["top"]["classes"]["positive"]["top"]] == [("great", 0.5), ("film", -0.1)]
    assert [(e["unit"], e["mean"]) for e in s["top"]["classes"]["negative"]["top"]] == [("film", 0.1), ("great", -0.5)]
    comp = s["metrics"]["comprehensiveness"]
    assert comp["count"] == 4 and close(comp["by_class"]["positive"]["mean"], 0.4)
    assert close(comp["by_class"]["negative"]["mean"], 0.1)


def test_contrast_names_the_pair():
    contrast = {**ROWS[0], "contrast": 0, "contrast_label": "negative"}
    assert list(summarize([contrast], min_count=1)["top"]["classes"]) == ["positive vs negative"]


def test_rows_from_replies():
    example = Example(3, "a film", "positive", 3)
    meta = {"tokens": ["a"], "attributions": [0.1], "labels": ["negative", "positive"], "probabilities": [0.4, 0.6],
            "n_steps": 22, "alphas": [0.5], "path_integrand": [1.0], "step_sizes": [1.0], "tensors": {},
            "timings": {"compute_seconds": 0.2}, "words": ["a"], "metrics": {"log_odds": -1.0}}
    out = ok_row(example, meta, request_seconds=0.25, attempts=2)
    assert out["id"] == 3 and out["text"] == "a film" and out["label"] == "positive"
    assert out["predicted"] == 1 and out["predicted_label"] == "positive" and out["correct"] is True
    assert out["steps_used"] == 22 and out["timings"] == {"compute_seconds": 0.2, "request_seconds": 0.25}
    assert out["words"] == ["a"] and out["metrics"] == {"log_odds": -1.0} and out["attempts"] == 2
    assert not {"alphas", "path_integrand", "step_sizes", "tensors"} & set(out)
    assert predicted_index([0.5, 0.5]) == 0 and predicted_index(None) is None


@pytest.mark.parametrize("values", [[3.0, 1.0, 2.0], [5.0]])
def test_distribution_is_order_free(values):
    d = distribution(values)
    assert d["min"] == min(values) and d["max"] == max(values) and d["count"] == len(values)
