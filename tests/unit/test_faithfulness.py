"""Faithfulness metrics against a direct computation: the model's own forward,
one perturbed input at a time, written out plainly here."""

from __future__ import annotations

import math

import pytest
import torch

from intgrads_zmq.engine.faithfulness import faithfulness, top_count
from intgrads_zmq.engine.memory import ChunkPlanner
from intgrads_zmq.errors import BadRequest

EPS32 = torch.finfo(torch.float32).eps
TEXT = "a great film with wonderful acting , but the ending was boring and the plot a mess ."
ALL = ["comprehensiveness", "sufficiency", "log_odds"]


@pytest.fixture(scope="module")
def three_class_bert(tmp_path_factory):
    from intgrads_zmq.models.loader import load_model
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.testing.tiny_models import make_tiny_bert

    folder = make_tiny_bert(tmp_path_factory.mktemp("bert3"), seed=3, labels=("neg", "neutral", "pos"))
    return load_model(ModelSpec(kind="hf", path=str(folder), name="bert3"), torch.device("cpu"))


def naive_probabilities(adapter, text, replace_positions, replacement_id):
    """The Hugging Face model's forward on the tokenizer's own inputs with some ids replaced."""
    inputs = adapter.tokenizer(text, return_tensors="pt")
    ids = inputs["input_ids"].clone()
    for position in replace_positions:
        ids[0, position] = replacement_id
    kwargs = {k: v for k, v in inputs.items() if k in ("token_type_ids", "attention_mask")}
    with torch.no_grad():
        logits = adapter.model(input_ids=ids, **kwargs).logits[0]
    return torch.softmax(logits.double(), dim=-1)


def naive_metrics(adapter, text, scores, target, contrast, replacement_id):
    """ERASER AOPC comprehensiveness / sufficiency and the DIG log-odds, one input at a time."""
    inputs = adapter.tokenizer(text)
    special = adapter.tokenizer.get_special_tokens_mask(inputs["input_ids"], already_has_special_tokens=True)
    candidates = [i for i in range(len(special)) if not special[i]]
    order = sorted(candidates, key=lambda i: (-float(scores[i]), i))

    def measure(probs):
        return float(probs[target]) - (float(probs[contrast]) if contrast is not None else 0.0)

    def log_ratio(probs):
        return math.log(probs[target]) - (math.log(probs[contrast]) if contrast is not None else 0.0)

    original = naive_probabilities(adapter, text, [], replacement_id)
    comprehensiveness, sufficiency = [], []
    for percent in range(10, 101, 10):
        top = order[: math.ceil(percent * len(order) / 100)]
        rest = [i for i in candidates if i not in top]
        comprehensiveness.append(measure(original) - measure(naive_probabilities(adapter, text, top, replacement_id)))
        sufficiency.append(measure(original) - measure(naive_probabilities(adapter, text, rest, replacement_id)))
    top20 = order[: math.ceil(20 * len(order) / 100)]
    log_odds = log_ratio(naive_probabilities(adapter, text, top20, replacement_id)) - log_ratio(original)
    return {
        "comprehensiveness": sum(comprehensiveness) / 10,
        "sufficiency": sum(sufficiency) / 10,
        "log_odds": log_odds,
        "curve_comprehensiveness": comprehensiveness,
        "curve_sufficiency": sufficiency,
        "full": measure(original),
    }


def tolerance(adapter, text):
    """float32 logits through two code paths (the adapter's layer-by-layer BERT
    and the model's forward): a few eps times the logits' size."""
    with torch.no_grad():
        logits = adapter.model(**adapter.tokenizer(text, return_tensors="pt")).logits
    return 64 * EPS32 * max(1.0, float(logits.abs().max()))


@pytest.mark.parametrize("contrast", [None, 0])
def test_metrics_equal_a_direct_computation(three_class_bert, contrast):
    adapter = three_class_bert
    encoded = adapter.encode(TEXT, 128)
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(encoded.length, generator=gen)
    scores[3] = scores[5]  # a tie: broken by position
    target = 2
    result = faithfulness(adapter, encoded, scores, target, contrast, ALL)
    mask_id = adapter.tokenizer.mask_token_id
    assert result["replacement"] == "[MASK]" and result["replacement_id"] == mask_id
    expected = naive_metrics(adapter, TEXT, scores, target, contrast, mask_id)
    tol = tolerance(adapter, TEXT)
    for name in ALL:
        assert result[name] == pytest.approx(expected[name], abs=tol, rel=0), name
    assert result["curve"]["comprehensiveness"] == pytest.approx(expected["curve_comprehensiveness"], abs=tol)
    assert result["curve"]["sufficiency"] == pytest.approx(expected["curve_sufficiency"], abs=tol)
    assert result["full"] == pytest.approx(expected["full"], abs=tol)
    assert result["curve"]["sufficiency"][-1] == 0.0  # keeping every token is the input itself
    assert result["measure"] == ("probability" if contrast is None else "probability_difference")
    n = encoded.length - 2
    assert result["ranked_tokens"] == n
    assert result["curve"]["fractions"] == pytest.approx([k / 10 for k in range(1, 11)])
    assert result["curve"]["removed_tokens"] == [math.ceil(k * n / 10) for k in range(1, 11)]
    assert result["curve"]["removed"] == pytest.approx(
        [result["full"] - d for d in result["curve"]["comprehensiveness"]], abs=4 * EPS32)
    # One original, ten removals, nine kept sets (keeping all is the original), log-odds reuses 20 %.
    assert result["forward_passes"] == 20 and result["batches"] >= 1 and result["seconds"] > 0


def test_log_odds_with_a_contrast_is_the_change_of_the_explained_function(three_class_bert):
    adapter = three_class_bert
    encoded = adapter.encode(TEXT, 128)
    scores = torch.arange(encoded.length, dtype=torch.float32)  # the last tokens rank highest
    result = faithfulness(adapter, encoded, scores, 1, 2, ["log_odds"])
    n = encoded.length - 2
    top = list(range(encoded.length - 2, encoded.length - 2 - top_count(2, n), -1))
    ids = encoded.input_ids.clone()
    ids[0, top] = adapter.tokenizer.mask_token_id
    with torch.no_grad():
        before = adapter.model(input_ids=encoded.input_ids).logits[0].double()
        after = adapter.model(input_ids=ids).logits[0].double()
    explained = (after[1] - after[2]) - (before[1] - before[2])
    assert result["log_odds"] == pytest.approx(float(explained), abs=tolerance(adapter, TEXT), rel=0)
    assert result["log_odds_removed_tokens"] == len(top) == math.ceil(0.2 * n)
    # Only what was asked: no ERASER numbers, no curve, two inputs run.
    assert "comprehensiveness" not in result and "curve" not in result
    assert result["forward_passes"] == 2


def test_small_batches_give_the_same_numbers(three_class_bert):
    adapter = three_class_bert
    encoded = adapter.encode(TEXT, 128)
    scores = torch.randn(encoded.length, generator=torch.Generator().manual_seed(1))
    whole = faithfulness(adapter, encoded, scores, 0, None, ["comprehensiveness"])
    tiny = ChunkPlanner(budget_bytes=1)  # one input per batch
    split = faithfulness(adapter, encoded, scores, 0, None, ["comprehensiveness"], planner=tiny)
    assert set(whole) - {"sufficiency"} == set(split) and "sufficiency" not in whole
    assert split["batches"] == split["forward_passes"] == 11 > whole["batches"]
    tol = tolerance(adapter, TEXT)
    assert split["comprehensiveness"] == pytest.approx(whole["comprehensiveness"], abs=tol, rel=0)
    assert split["curve"]["removed"] == pytest.approx(whole["curve"]["removed"], abs=tol)
    assert "kept" not in split["curve"]


def test_xlnet_and_pad_replacement(tiny_xlnet, tiny_bert_dir):
    """XLNet (inputs_embeds adapter, special tokens at the end) against its own forward."""
    adapter = tiny_xlnet
    text = "the story is not very good , but the music is great !"
    encoded = adapter.encode(text, 128)
    scores = torch.randn(encoded.length, generator=torch.Generator().manual_seed(2))
    result = faithfulness(adapter, encoded, scores, 1, None, ALL)
    assert result["replacement"] == "<mask>"
    mask_id = adapter.tokenizer.mask_token_id
    special = encoded.special
    assert special[-2:] == [True, True] and not any(special[:-2])
    order = sorted(range(encoded.length - 2), key=lambda i: (-float(scores[i]), i))
    n = len(order)
    expected = []
    for k in range(1, 11):
        ids = encoded.input_ids.clone()
        ids[0, order[: math.ceil(k * n / 10)]] = mask_id
        with torch.no_grad():
            expected.append(float(torch.softmax(adapter.model(input_ids=ids, **encoded.extras,
                                                              use_mems=False).logits[0].double(), -1)[1]))
    tol = 64 * EPS32
    assert result["curve"]["removed"] == pytest.approx(expected, abs=tol)


def test_no_mask_token_falls_back_to_pad_and_bad_metrics_are_refused(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from intgrads_zmq.models.factory import build_adapter

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    tokenizer.mask_token = None
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    adapter = build_adapter(model, tokenizer, name="nomask", device=torch.device("cpu"))
    encoded = adapter.encode(TEXT, 64)
    scores = torch.randn(encoded.length, generator=torch.Generator().manual_seed(3))
    result = faithfulness(adapter, encoded, scores, 1, None, ["sufficiency"])
    assert result["replacement"] == "[PAD]" and result["replacement_id"] == tokenizer.pad_token_id
    expected = naive_metrics(adapter, TEXT, scores, 1, None, tokenizer.pad_token_id)
    assert result["sufficiency"] == pytest.approx(expected["sufficiency"], abs=tolerance(adapter, TEXT), rel=0)

    tokenizer.pad_token = None
    with pytest.raises(BadRequest) as err:
        faithfulness(adapter, encoded, scores, 1, None, ["sufficiency"])
    assert err.value.field == "metrics" and "nomask" in err.value.description
    for bad in (["aopc"], []):
        with pytest.raises(BadRequest) as err:
            faithfulness(adapter, encoded, scores, 1, None, bad)
        assert err.value.field == "metrics"
