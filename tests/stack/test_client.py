"""The Python client against the real stack: gunicorn, broker, a worker process.

The worker runs with a fault that delays any text containing "SLOW" by 3 s,
so a client-side timeout can be provoked without a slow model.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from intgrads_zmq.client import ApiError, Client, RequestTimeout, ServerUnreachable
from intgrads_zmq.errors import BadRequest, UnknownModel
from intgrads_zmq.testing.stack import free_port, running_stack, start_frontend

SEED_KEYS = ("integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates")
FAULTS = json.dumps({"sleep_on": "SLOW", "sleep_seconds": 3})


@pytest.fixture(scope="module")
def client(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("client-stack")
    with running_stack(["--model", str(tiny_bert_dir), "--name", "tiny"], folder=folder,
                       env={"INTGRADS_FAULTS": FAULTS}) as (_, frontend):
        yield Client(frontend.url, timeout=60)


def test_torch_format_is_the_original_dict(client):
    grads = client.attribute("a great film with wonderful acting", n_steps=4)
    tokens = len(grads["tokens"])
    assert set(SEED_KEYS) <= set(grads)
    assert grads["integrated_gradients"].shape == (1, tokens, 32)
    assert grads["intermediate_gradients"].shape == (4, tokens, 32)
    assert grads["step_sizes"].shape == (4, 1)
    assert grads["n_steps"] == 4 and grads["model"] == "tiny"
    assert abs(sum(grads["probabilities"]) - 1) < 1e-5


def test_unset_options_use_the_server_defaults(client):
    grads = client.attribute("a great film", fields=["step_sizes"])
    assert grads["n_steps"] == 50 and grads["method"] == "gausslegendre" and grads["baseline"] == "pad"
    assert set(SEED_KEYS) & set(grads) == {"step_sizes"}


def test_json_format(client):
    summary = client.attribute("a great film", n_steps=3, format="json")
    assert summary["tensors"] == {} and len(summary["attributions"]) == len(summary["tokens"])
    full = client.attribute("a great film", n_steps=3, format="json", fields="integrated_gradients")
    ig = full["tensors"]["integrated_gradients"]
    assert ig["shape"] == [1, len(full["tokens"]), 32]


def test_safetensors_format_merges_tensors_and_metadata(client):
    result = client.attribute("a terrible boring film", n_steps=5, baseline="zero",
                              format="safetensors")
    assert all(isinstance(result[k], torch.Tensor) for k in SEED_KEYS)
    assert result["step_sizes"].shape == (5, 1)
    assert result["baseline"] == "zero" and result["n_steps"] == 5
    assert result["integrated_gradients"].shape[1] == len(result["tokens"])


def test_formats_agree(client):
    options = {"n_steps": 3, "method": "riemann_middle", "target": "positive"}
    from_torch = client.attribute("the music is fine", **options)
    from_st = client.attribute("the music is fine", format="safetensors", **options)
    assert torch.equal(from_torch["integrated_gradients"], from_st["integrated_gradients"])
    assert from_torch["target_label"] == from_st["target_label"] == "positive"


@pytest.mark.parametrize("fmt", ["torch", "json", "safetensors"])
def test_attribute_many_keeps_order(client, fmt):
    texts = ["a great film", "a terrible boring film", "the music is fine"]
    results = client.attribute_many(texts, n_steps=2, format=fmt, model="tiny")
    assert len(results) == 3
    assert [r["tokens"][1] for r in results] == ["a", "a", "the"]
    if fmt != "json":
        assert results[2]["step_sizes"].shape == (2, 1)


def test_named_model(client):
    assert client.attribute("a great film", n_steps=2, model="tiny", format="json")["model"] == "tiny"


def test_models_health_ready(client):
    models = client.models()
    assert [m["name"] for m in models["models"]] == ["tiny"]
    assert models["models"][0]["labels"] == ["negative", "positive"]
    assert client.health() == {"status": "ok"}
    assert client.ready() is True


def test_bad_request_carries_the_field(client):
    with pytest.raises(ApiError) as info:
        client.attribute("a great film", n_steps=0)
    error = info.value
    assert error.status == 400 and error.code == "bad_request" and error.field == "n_steps"
    assert error.title and "n_steps" in error.description
    assert isinstance(error.error, BadRequest) and error.error.field == "n_steps"
    assert not error.retryable


def test_batch_error_names_the_sequence(client):
    with pytest.raises(ApiError) as info:
        client.attribute_many(["a great film", "  "], n_steps=2)
    assert info.value.status == 400 and info.value.field == "sequences"


def test_unknown_model_is_404(client):
    with pytest.raises(ApiError) as info:
        client.attribute("a great film", model="nope")
    assert info.value.status == 404 and info.value.code == "unknown_model"
    assert isinstance(info.value.error, UnknownModel)


def test_unreachable_server_raises_quickly():
    dead = Client(f"http://127.0.0.1:{free_port()}", timeout=5)
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as info:
        dead.attribute("a great film")
    assert time.monotonic() - started < 2
    assert info.value.status == 0 and info.value.code == "unreachable" and info.value.retryable
    assert dead.ready() is False


def test_client_timeout_on_a_slow_request(client):
    started = time.monotonic()
    with pytest.raises(RequestTimeout) as info:
        client.attribute("a SLOW film", n_steps=2, timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert info.value.status == 0 and info.value.code == "timeout"
    # The server is still fine afterwards (the slow request drains first).
    assert client.attribute("a great film", n_steps=2, format="json")["model"] == "tiny"


def test_tiny_timeout_raises_instead_of_hanging(client):
    with pytest.raises(RequestTimeout):
        client.attribute("a great film", n_steps=50, timeout=0.001)


def test_not_ready_and_503_without_a_broker(tmp_path):
    frontend = start_frontend(f"ipc://{tmp_path}/no-broker", folder=tmp_path)
    try:
        lonely = Client(frontend.url, timeout=20)
        assert lonely.health() == {"status": "ok"}
        assert lonely.ready() is False
        with pytest.raises(ApiError) as info:
            lonely.attribute("a great film", n_steps=2)
        assert info.value.status == 503 and info.value.code == "broker_unavailable"
        assert info.value.retryable and info.value.retry_after and info.value.retry_after > 0
    finally:
        frontend.stop()


# -- long requests: progress and jobs -------------------------------------------------
def test_progress_arrives_by_events_for_json(client):
    seen: list[dict] = []
    result = client.attribute("a great film with wonderful acting", n_steps=50, format="json", progress=seen.append)
    assert result["model"] == "tiny" and len(result["attributions"]) == len(result["tokens"])
    assert seen[0] == {"state": "queued", "position": 0}
    assert seen[-1]["state"] == "running" and {"done", "total", "eta_seconds"} <= set(seen[-1])


def test_progress_arrives_by_polling_a_job_for_binary_formats(client):
    seen: list[dict] = []
    grads = client.attribute("a SLOW film", n_steps=4, progress=seen.append, timeout=60)
    assert tuple(grads["integrated_gradients"].shape[:1]) == (1,)
    assert seen[-1]["state"] == "done" and seen[-1]["done"] == seen[-1]["total"] == 4
    assert any(s["state"] in ("queued", "running") for s in seen[:-1])  # it slept 3 s in between


def test_a_job_can_be_followed_fetched_in_any_format_and_cancelled(client):
    slow = client.submit("a SLOW film", n_steps=4)
    assert slow.status()["state"] in ("queued", "running")
    assert slow.cancel()["state"] == "cancelled"
    with pytest.raises(ApiError) as info:
        slow.result(timeout=30)
    assert info.value.status == 499 and info.value.code == "cancelled"

    job = client.submit("a great film", n_steps=4)
    as_json = client.job(job.id).result(format="json", timeout=60)  # another handle, by id
    tensors = job.result(format="safetensors")
    assert tensors["tokens"] == as_json["tokens"]
    assert tensors["integrated_gradients"].shape[1] == len(as_json["tokens"])
    assert job.cancel()["state"] == "done"  # finished: a no-op
    with pytest.raises(ApiError) as info:
        client.job("0" * 32).status()
    assert info.value.status == 404 and "restarted" in info.value.description
