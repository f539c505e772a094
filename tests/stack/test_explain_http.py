"""Issue 14's options through the real stack (gunicorn, broker, one worker
process of a 3-class tiny BERT), and issue 16's rule that the worker enforces
its own limits: a 7 MB text sent straight to the broker's frontend port is
refused by the worker."""

from __future__ import annotations

import gzip
import io
import json

import pytest
import torch

from intgrads_zmq.errors import BadRequest
from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.testing.stack import running_stack

TEXT = "a great film , not boring !"
LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from intgrads_zmq.testing.tiny_models import make_tiny_bert

    folder = tmp_path_factory.mktemp("explain-stack")
    model = make_tiny_bert(folder / "bert3", labels=LABELS, seed=5)
    with running_stack(["--model", str(model), "--name", "bert3"], folder=folder) as (broker, frontend):
        yield broker, frontend


def post_json(frontend, body):
    status, _, raw = frontend.post("/model/?format=json", body)
    data = json.loads(raw)
    assert status == 200, data
    return data


def tensor(data, name):
    spec = data["tensors"][name]
    return torch.tensor(spec["data"], dtype=torch.float32).view(spec["shape"])


def test_all_equals_the_single_targets_in_json_and_torch(stack):
    _, frontend = stack
    request = {"sequence": TEXT, "n_steps": 6, "fields": ["integrated_gradients", "intermediate_gradients"]}
    every = post_json(frontend, {**request, "target": "all"})
    tokens = len(every["tokens"])
    ig = tensor(every, "integrated_gradients")
    assert ig.shape == (3, 1, tokens, 32) and tensor(every, "intermediate_gradients").shape == (3, 6, tokens, 32)
    assert every["target"] == [0, 1, 2] and every["target_label"] == list(LABELS)
    for c in range(3):
        one = post_json(frontend, {**request, "target": LABELS[c]})
        reference = tensor(one, "integrated_gradients")
        assert float((ig[c] - reference).abs().max()) <= 1e-6 * float(reference.abs().max())
        assert every["attributions"][c] == pytest.approx(one["attributions"], rel=1e-6, abs=1e-12)
        assert every["f_input"][c] == one["f_input"] and every["completeness_error"][c] == pytest.approx(
            one["completeness_error"], rel=1e-6, abs=1e-9)
    status, _, body = frontend.post("/model/", {"sequence": TEXT, "n_steps": 6, "target": "all"})
    grads = torch.load(io.BytesIO(gzip.decompress(body)), weights_only=True)
    assert status == 200 and grads["integrated_gradients"].shape == (3, 1, tokens, 32)
    assert grads["step_sizes"].shape == (6, 1) and grads["intermediates"].shape == (6, tokens, 32)
    torch.testing.assert_close(grads["integrated_gradients"], ig, rtol=0, atol=0)
    assert grads["target"] == [0, 1, 2] and len(grads["attributions"]) == 3


def test_contrast_words_and_metrics_in_one_request(stack):
    _, frontend = stack
    base = {"sequence": TEXT, "n_steps": 6}
    target, other = post_json(frontend, {**base, "target": 2}), post_json(frontend, {**base, "target": 0})
    metrics = ["comprehensiveness", "sufficiency", "log_odds"]
    data = post_json(frontend, {**base, "target": "positive", "contrast": "negative", "aggregate": "words",
                                "metrics": metrics})  # fmt: skip
    assert data["target"] == 2 and data["contrast"] == 0 and data["contrast_label"] == "negative"
    assert data["f_input"] == pytest.approx(target["f_input"] - other["f_input"], rel=1e-6, abs=1e-6)
    assert data["f_baseline"] == pytest.approx(target["f_baseline"] - other["f_baseline"], rel=1e-6, abs=1e-6)
    difference = [a - b for a, b in zip(target["attributions"], other["attributions"], strict=True)]
    scale = max(abs(v) for v in target["attributions"] + other["attributions"])
    assert all(abs(a - b) <= 1e-5 * scale for a, b in zip(data["attributions"], difference, strict=True))
    assert data["completeness_error"] == pytest.approx(
        abs(data["attribution_sum"] - (data["f_input"] - data["f_baseline"])), rel=1e-6, abs=1e-12)
    assert sum(data["word_attributions"]) == pytest.approx(sum(data["attributions"]), rel=1e-9, abs=1e-12)
    assert data["words"][0] == "[CLS]" and data["word_spans"][0] is None
    assert data["metrics"]["contrast"] == 0 and set(metrics) <= set(data["metrics"])
    assert data["timings"]["metrics_seconds"] > 0
    status, _, body = frontend.post("/model/", {**base, "target": 2, "contrast": 1, "aggregate": "words",
                                                "metrics": ["log_odds"]})  # fmt: skip
    grads = torch.load(io.BytesIO(gzip.decompress(body)), weights_only=True)
    assert status == 200 and grads["contrast"] == 1 and grads["contrast_label"] == "neutral"
    assert grads["words"] == data["words"] and "log_odds" in grads["metrics"]


def test_mask_baseline_and_every_bad_value_is_a_400_naming_its_field(stack):
    _, frontend = stack
    data = post_json(frontend, {"sequence": TEXT, "n_steps": 4, "baseline": "mask"})
    assert data["baseline"] == "mask" and data["completeness_error"] >= 0
    bad = [({"target": ""}, "target"), ({"target": "sad"}, "target"), ({"target": 3}, "target"),
           ({"contrast": 1, "target": "all"}, "contrast"), ({"contrast": "neutral", "target": 1}, "contrast"),
           ({"contrast": 9}, "contrast"), ({"contrast": "sad"}, "contrast"), ({"aggregate": "letters"}, "aggregate"),
           ({"metrics": ["accuracy"]}, "metrics"), ({"metrics": ["log_odds", "log_odds"]}, "metrics"),
           ({"baseline": "masked"}, "baseline")]  # fmt: skip
    for body, field in bad:  # the last four of target/contrast need the model's labels: the worker's 400
        status, _, raw = frontend.post("/model/", {"sequence": TEXT, "n_steps": 2, **body})
        error = json.loads(raw)
        assert status == 400 and error["field"] == field and error["code"] == "bad_request", (body, error)
    models = json.loads(frontend.get("/models")[2])["models"][0]
    assert models["defaults"]["aggregate"] == "tokens" and models["defaults"]["metrics"] == []
    assert models["limits"]["max_target_classes"] == 32


def test_the_worker_refuses_a_7_mb_text_sent_straight_to_the_broker(stack):
    broker, frontend = stack
    huge = "a " * 3_500_000  # 7 MB: 70 times what the HTTP frontend admits
    keys = {"curve": broker.curve} if getattr(broker, "curve", None) is not None else {}
    with BrokerClient(broker.frontend, **keys) as client:
        with pytest.raises(BadRequest) as caught:
            client.attribute(huge, model="bert3", options={"n_steps": 2})
        assert caught.value.field == "sequence" and "100000 characters" in caught.value.description
        assert client.attribute(TEXT, model="bert3", options={"n_steps": 2}).meta["tokens"]
    status, _, _ = frontend.post("/model/", {"sequence": "a " * 60_000, "n_steps": 2})
    assert status == 400
