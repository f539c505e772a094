"""Issue 14's request options as the validators see them: target "all",
contrast, aggregate, metrics and the mask baseline; every bad value is a 400
naming its field, at the frontend (parse_request, the Falcon app) and again
at the worker (resolve_options); /models, the OpenAPI document and the
client carry them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from intgrads_zmq.client import _options
from intgrads_zmq.errors import BadRequest
from intgrads_zmq.options import (
    AGGREGATES,
    BASELINES,
    METRICS,
    AttributionOptions,
    Limits,
    check_sequence,
    parse_request,
    resolve_options,
)

TEXT = "a great film"

BAD = [
    ({"target": ""}, "target"),
    ({"target": 1.5}, "target"),
    ({"target": True}, "target"),
    ({"target": ["all"]}, "target"),
    ({"target": -1}, "target"),
    ({"contrast": "all", "target": 1}, "contrast"),
    ({"contrast": 1, "target": "all"}, "contrast"),
    ({"contrast": "positive", "target": "all"}, "contrast"),
    ({"contrast": 1, "target": 1}, "contrast"),
    ({"contrast": "Positive", "target": "positive"}, "contrast"),
    ({"contrast": -2}, "contrast"),
    ({"contrast": 0.5}, "contrast"),
    ({"contrast": ""}, "contrast"),
    ({"contrast": {"label": 1}}, "contrast"),
    ({"aggregate": "characters"}, "aggregate"),
    ({"aggregate": ["words"]}, "aggregate"),
    ({"aggregate": None}, "aggregate"),
    ({"metrics": ["accuracy"]}, "metrics"),
    ({"metrics": ["sufficiency", "sufficiency"]}, "metrics"),
    ({"metrics": "sufficiency"}, "metrics"),
    ({"metrics": [1]}, "metrics"),
    ({"metrics": None}, "metrics"),
    ({"baseline": "MASK"}, "baseline"),
]


@pytest.mark.parametrize("body, field", BAD, ids=[json.dumps(b) for b, _ in BAD])
def test_every_bad_value_is_a_400_naming_its_field(body, field):
    with pytest.raises(BadRequest) as caught:
        parse_request({"sequence": TEXT, **body}, Limits())
    assert caught.value.field == field and caught.value.status == 400
    assert field in caught.value.description
    # The worker checks again what a peer sent, with the same answer.
    with pytest.raises(BadRequest) as again:
        resolve_options(body, AttributionOptions(), Limits())
    assert again.value.field == field


def test_good_values_pass_and_fill_the_options():
    parsed = parse_request({"sequence": TEXT, "target": "all", "aggregate": "words",
                            "metrics": ["log_odds", "comprehensiveness"], "baseline": "mask"}, Limits())
    options = resolve_options(parsed.options, AttributionOptions(), Limits())
    assert options.every_class and options.target == "all" and options.contrast is None
    assert options.aggregate == "words" and options.metrics == ("log_odds", "comprehensiveness")
    assert options.baseline == "mask" and "mask" in BASELINES
    contrast = resolve_options({"target": 1, "contrast": "negative", "metrics": []}, AttributionOptions(), Limits())
    assert contrast.contrast == "negative" and contrast.metrics == () and not contrast.every_class
    # A label named like its index is the worker's to compare: both pass here.
    assert resolve_options({"target": 0, "contrast": "0"}, AttributionOptions(), Limits()).contrast == "0"
    # contrast without a target: explained against the predicted class (checked by the worker).
    assert resolve_options({"contrast": 0}, AttributionOptions(), Limits()).target is None


def test_defaults_publish_the_new_options():
    """What the worker announces (and /models shows) as defaults and limits."""
    defaults = AttributionOptions().to_dict()
    assert defaults["contrast"] is None and defaults["aggregate"] == "tokens" and defaults["metrics"] == []
    assert json.loads(json.dumps(defaults)) == defaults
    assert Limits().to_dict()["max_target_classes"] == 32
    assert AGGREGATES == ("tokens", "words") and METRICS == ("comprehensiveness", "sufficiency", "log_odds")


def test_a_worker_default_contrast_meets_the_requests_target():
    """A contrast set as a server default is checked against the request's target."""
    defaults = AttributionOptions(contrast=0)
    with pytest.raises(BadRequest) as caught:
        resolve_options({"target": "all"}, defaults, Limits())
    assert caught.value.field == "contrast"
    assert resolve_options({"target": 1}, defaults, Limits()).contrast == 0


def test_the_sequence_check_refuses_a_huge_text_by_its_length_first():
    limits = Limits(max_sequence_chars=1000)

    class Huge(str):
        def strip(self, *args: Any) -> str:  # pragma: no cover - must not be reached
            raise AssertionError("an oversized text was scanned before its length was checked")

    with pytest.raises(BadRequest) as caught:
        check_sequence(Huge("x" * 1001), limits)
    assert caught.value.field == "sequence" and "1000" in caught.value.description
    for bad in (7, "   ", "a\x00b"):
        with pytest.raises(BadRequest):
            check_sequence(bad, limits)
    assert check_sequence("x" * 1000, limits) == "x" * 1000


def test_the_client_sends_only_what_was_set():
    assert _options(None, None, None, "all", None, None, None) == {"target": "all"}
    sent = _options(None, None, None, 1, None, None, None, None, contrast="negative", aggregate="words",
                    metrics=("sufficiency",))
    assert sent == {"target": 1, "contrast": "negative", "aggregate": "words", "metrics": ["sufficiency"]}
    assert _options(None, None, None, None, None, None, None, metrics="log_odds") == {"metrics": ["log_odds"]}
    assert _options(None, None, None, None, None, None, None, metrics=[]) == {"metrics": []}


# -- the HTTP side, in process (the Falcon app with a stand-in broker client) ---


@pytest.fixture
def web():
    from tests.unit.test_handlers import _app, _model, _status

    return _app(_status(tiny=_model(limits={**Limits().to_dict(), "max_target_classes": 4})))


def test_the_app_refuses_bad_values_before_the_broker(web):
    client, fake = web
    for body, field in BAD:
        result = client.simulate_post("/model/", json={"sequence": TEXT, **body})
        assert result.status_code == 400 and result.json["field"] == field, (body, result.json)
    assert fake.submitted == []
    result = client.simulate_post("/model/", json={"sequence": TEXT, "target": "all", "contrast": None,
                                                   "aggregate": "tokens", "metrics": ["sufficiency"]})
    assert result.status_code == 200
    assert fake.submitted[-1][2]["target"] == "all" and list(fake.submitted[-1][2]["metrics"]) == ["sufficiency"]


def test_models_and_openapi_show_the_options(web):
    client, _ = web
    limits = client.simulate_get("/models").json["limits"]
    assert limits["max_target_classes"] == 4  # the workers' value, not the frontend's fallback
    schema = client.simulate_get("/openapi.json").json["paths"]["/model/"]["post"]["requestBody"]
    properties = schema["content"]["application/json"]["schema"]["properties"]
    assert "mask" in properties["baseline"]["enum"]
    assert properties["aggregate"]["enum"] == list(AGGREGATES)
    assert properties["metrics"]["items"]["enum"] == list(METRICS) and properties["metrics"]["uniqueItems"]
    assert "contrast" in properties and "'all'" in properties["target"]["description"]
    assert "(C, 1, T, H)" in properties["target"]["description"]
    assert "4 classes" in properties["target"]["description"]


def test_the_class_limit_of_target_all_is_a_serving_flag_that_reaches_the_workers():
    """--max-target-classes: from the command line to each worker's limits (which
    it enforces and reports to /models)."""
    from click.testing import CliRunner

    from intgrads_zmq.cli import main, serve_settings
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.service.assembly import plan_workers

    (config,) = plan_workers("ipc:///tmp/x", ModelSpec(), serve_settings({
        "cuda": False, "num_cuda_devs": 1, "workers": None, "baseline": "pad", "method": "gausslegendre",
        "n_steps": 50, "max_steps": 300, "max_target_classes": 3, "max_length": 512, "dtype": "float32",
        "memory_budget": None}))
    assert config.limits["max_target_classes"] == 3
    assert config.attribution_limits().max_target_classes == 3
    help_text = CliRunner().invoke(main, ["start", "--help"]).output
    assert "--max-target-classes" in help_text
