"""The HTTP frontend: real gunicorn, real broker, real workers, real curl."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import time

import pytest
import torch

from intgrads_zmq.testing.stack import (
    PYTHON,
    REPO,
    base_env,
    start_broker,
    start_frontend,
    wait_until,
)

SEED_KEYS = ("integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates")
EXTRA_KEYS = ("tokens", "probabilities", "target", "f_input", "f_baseline", "completeness_error", "truncated")


@pytest.fixture(scope="module")
def stack(tiny_bert_dir, tiny_xlnet_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], workers=1, folder=folder)
    xlnet = subprocess.Popen(
        [PYTHON, "-m", "intgrads_zmq.cli", "worker", "--connect", broker.backend, "--model", str(tiny_xlnet_dir),
         "--name", "xlnet", "--cpu", "--heartbeat", "0.5"],
        cwd=REPO, env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    frontend = None
    try:
        broker.wait_ready(workers=2)
        frontend = start_frontend(broker.frontend, folder=folder)
        yield frontend
    finally:
        if frontend:
            frontend.stop()
        xlnet.terminate()
        xlnet.wait(timeout=30)
        broker.stop()


def seed_snippet(path):
    """The original README's decoding snippet, verbatim in substance."""
    with gzip.open(path, "rb") as fobj:
        x = io.BytesIO(fobj.read())
        grad_dict = torch.load(x)
    return grad_dict


def test_both_seed_curl_commands_verbatim(stack, tmp_path):
    port = stack.url.rsplit(":", 1)[1]
    (tmp_path / "input_json_file.json").write_text('{"sequence": "a great film with wonderful acting"}')
    commands = [
        f'curl http://localhost:{port}/model/ --data @input_json_file.json --output saved_file.gzip '
        f'-H "Content-Type:application/json; chartset=utf-8"',
        f"curl http://localhost:{port}/model/ -d '{{\"sequence\": \"This is the sequence that you want to get "
        f"the sentiment of\"}}' --output saved_file.gzip",
    ]
    for command in commands:
        (tmp_path / "saved_file.gzip").unlink(missing_ok=True)
        subprocess.run(command, shell=True, cwd=tmp_path, check=True, timeout=120)
        grads = seed_snippet(tmp_path / "saved_file.gzip")
        assert all(k in grads for k in SEED_KEYS + EXTRA_KEYS)
        tokens = len(grads["tokens"])
        assert grads["integrated_gradients"].shape == (1, tokens, 32)
        assert grads["intermediate_gradients"].shape == (50, tokens, 32)
        assert grads["step_sizes"].shape == (50, 1)
        assert grads["intermediates"].shape == (50, tokens, 32)
        assert abs(sum(grads["probabilities"]) - 1) < 1e-5


def test_gzip_headers(stack):
    status, headers, body = stack.post("/model/", {"sequence": "a great film", "n_steps": 3})
    assert status == 200
    assert headers["content-type"] == "application/gzip"
    assert headers["content-disposition"] == 'attachment; filename="returned_gradients.gzip"'
    assert body[:2] == b"\x1f\x8b"


def test_json_format_by_accept_and_by_query(stack):
    for path, headers in (("/model/", {"Accept": "application/json"}), ("/model/?format=json", {})):
        status, head, body = stack.post(path, {"sequence": "a great film", "n_steps": 4}, headers=headers)
        assert status == 200 and head["content-type"].startswith("application/json")
        data = json.loads(body)
        assert len(data["attributions"]) == len(data["tokens"])
        assert data["tensors"] == {}
        assert data["completeness_error"] < 1e-3


def test_json_with_full_tensors_when_asked(stack):
    status, _, body = stack.post("/model/?format=json", {"sequence": "a great film", "n_steps": 3,
                                                          "fields": ["integrated_gradients", "step_sizes"]})
    data = json.loads(body)
    assert status == 200 and set(data["tensors"]) == {"integrated_gradients", "step_sizes"}
    ig = data["tensors"]["integrated_gradients"]
    assert ig["shape"] == [1, len(data["tokens"]), 32] and len(ig["data"][0]) == len(data["tokens"])


def test_safetensors_format(stack):
    from safetensors import safe_open

    status, head, body = stack.post("/model/?format=safetensors", {"sequence": "a great film", "n_steps": 5})
    assert status == 200 and head["content-type"] == "application/octet-stream"
    path = stack.log.parent / "out.safetensors"
    path.write_bytes(body)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(SEED_KEYS)
        assert f.get_tensor("step_sizes").shape == (5, 1)
        assert json.loads(f.metadata()["intgrads"])["n_steps"] == 5


def test_field_selection_in_the_torch_dict(stack):
    status, _, body = stack.post("/model/", {"sequence": "a great film", "n_steps": 3,
                                             "fields": ["integrated_gradients"]})
    grads = torch.load(io.BytesIO(gzip.decompress(body)))
    assert status == 200 and "integrated_gradients" in grads
    assert not {"intermediate_gradients", "intermediates", "step_sizes"} & set(grads)


def test_several_sequences_and_a_named_model(stack):
    texts = ["a great film", "a terrible boring film", "the music is fine"]
    status, _, body = stack.post("/model/xlnet/?format=json", {"sequences": texts, "n_steps": 3})
    assert status == 200
    results = json.loads(body)["results"]
    assert [r["model"] for r in results] == ["xlnet"] * 3
    assert results[1]["tokens"] != results[0]["tokens"]
    status, _, body = stack.post("/model/tiny", {"sequences": texts[:2], "n_steps": 3})
    assert status == 200 and len(torch.load(io.BytesIO(gzip.decompress(body)))["results"]) == 2


BAD_REQUESTS = [
    # (description, path, body bytes, expected status, field)
    ("empty body", "/model/", b"", 400, "sequence"),
    ("whitespace body", "/model/", b"   \n", 400, "sequence"),
    ("not JSON", "/model/", b"sequence=hello", 400, None),
    ("truncated JSON", "/model/", b'{"sequence": "a', 400, None),
    ("JSON array", "/model/", b'["a great film"]', 400, "sequence"),
    ("JSON string", "/model/", b'"a great film"', 400, "sequence"),
    ("JSON null", "/model/", b"null", 400, "sequence"),
    ("missing sequence", "/model/", b'{"n_steps": 3}', 400, "sequence"),
    ("empty sequence", "/model/", b'{"sequence": ""}', 400, "sequence"),
    ("blank sequence", "/model/", b'{"sequence": "  \\t "}', 400, "sequence"),
    ("sequence is a number", "/model/", b'{"sequence": 42}', 400, "sequence"),
    ("sequence is a list", "/model/", b'{"sequence": ["a"]}', 400, "sequence"),
    ("both sequence and sequences", "/model/", b'{"sequence": "a", "sequences": ["b"]}', 400, "sequences"),
    ("empty sequences", "/model/", b'{"sequences": []}', 400, "sequences"),
    ("sequences with a number", "/model/", b'{"sequences": ["a", 3]}', 400, "sequences"),
    ("unknown option", "/model/", b'{"sequence": "a", "temperature": 2}', 400, "temperature"),
    ("n_steps zero", "/model/", b'{"sequence": "a", "n_steps": 0}', 400, "n_steps"),
    ("n_steps too big", "/model/", b'{"sequence": "a", "n_steps": 100000}', 400, "n_steps"),
    ("n_steps a float", "/model/", b'{"sequence": "a", "n_steps": 5.5}', 400, "n_steps"),
    ("n_steps a string", "/model/", b'{"sequence": "a", "n_steps": "50"}', 400, "n_steps"),
    ("n_steps a bool", "/model/", b'{"sequence": "a", "n_steps": true}', 400, "n_steps"),
    ("n_steps huge integer", "/model/", b'{"sequence": "a", "n_steps": 1' + b"0" * 5000 + b"}", 400, None),
    ("NaN", "/model/", b'{"sequence": "a", "seed": NaN}', 400, None),
    ("Infinity", "/model/", b'{"sequence": "a", "n_steps": Infinity}', 400, None),
    ("bad method", "/model/", b'{"sequence": "a", "method": "simpson"}', 400, "method"),
    ("bad baseline", "/model/", b'{"sequence": "a", "baseline": "mean"}', 400, "baseline"),
    ("negative seed", "/model/", b'{"sequence": "a", "seed": -1}', 400, "seed"),
    ("max_length too big", "/model/", b'{"sequence": "a", "max_length": 100000}', 400, "max_length"),
    ("unknown field name", "/model/", b'{"sequence": "a", "fields": ["gradients"]}', 400, "fields"),
    ("target out of range", "/model/", b'{"sequence": "a", "target": 7}', 400, "target"),
    ("unknown label", "/model/", b'{"sequence": "a", "target": "neutral"}', 400, "target"),
    ("target a float", "/model/", b'{"sequence": "a", "target": 1.5}', 400, "target"),
    ("trapezoid with one step", "/model/", b'{"sequence": "a", "method": "riemann_trapezoid", "n_steps": 1}',
     400, "n_steps"),
    ("invalid UTF-8", "/model/", b'{"sequence": "\xff\xfe"}', 400, None),
    ("lone surrogate", "/model/", b'{"sequence": "\\ud800"}', 400, "sequence"),
    ("NUL in text", "/model/", b'{"sequence": "a\\u0000b"}', 400, "sequence"),
    ("bad format", "/model/?format=xml", b'{"sequence": "a"}', 400, "format"),
    ("unknown model", "/model/nope/", b'{"sequence": "a"}', 404, None),
    ("unknown route", "/explain/", b'{"sequence": "a"}', 404, None),
    ("deep nesting", "/model/", b'{"sequence": ' + b"[" * 50000 + b"]" * 50000 + b"}", 400, None),
    ("body over the limit", "/model/", b'{"sequence": "' + b"a" * (2 << 20) + b'"}', 413, None),
]


@pytest.mark.parametrize(("name", "path", "body", "status", "field"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(stack, name, path, body, status, field):
    got, headers, raw = stack.post(path, body, headers={"Content-Type": "application/json"})
    assert got == status, raw[:300]
    error = json.loads(raw)
    assert error["title"] and error["description"]
    assert "Traceback" not in error["description"]
    if field:
        assert error.get("field") == field
    ok, _, _ = stack.post("/model/", {"sequence": "a great film", "n_steps": 2})
    assert ok == 200


def test_wrong_method_is_405_with_json(stack):
    status, _, raw = stack.get("/model/")
    assert status == 405 and json.loads(raw)["description"]


def test_models_health_ready_metrics_openapi(stack):
    status, _, raw = stack.get("/models")
    models = {m["name"]: m for m in json.loads(raw)["models"]}
    assert status == 200 and set(models) == {"tiny", "xlnet"}
    assert models["tiny"]["labels"] == ["negative", "positive"] and models["tiny"]["workers"] == 1
    assert stack.get("/healthz")[0] == 200
    status, _, raw = stack.get("/readyz")
    assert status == 200 and json.loads(raw)["workers"] == {"tiny": 1, "xlnet": 1}
    status, headers, raw = stack.get("/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'intgrads_workers_ready{model="tiny"} 1.0' in text
    assert "intgrads_http_request_seconds_bucket" in text and "intgrads_queue_depth" in text
    status, _, raw = stack.get("/openapi.json")
    document = json.loads(raw)
    assert status == 200 and "/model/" in document["paths"]
    for page in ("/", "/static/app.js"):
        status, headers, _ = stack.get(page)
        assert status == 200 and headers["cache-control"] == "no-cache"


def test_broker_down_gives_503_quickly_and_service_resumes(tiny_bert_dir, tmp_path):
    endpoint = f"ipc://{tmp_path}/frontend"
    frontend = start_frontend(endpoint, folder=tmp_path)
    broker = None
    try:
        # 503 broker_unavailable, not 504: the request did not wait out its deadline.
        status, headers, raw = frontend.post("/model/", {"sequence": "a great film", "n_steps": 2})
        assert status == 503
        assert headers.get("retry-after") and json.loads(raw)["code"] == "broker_unavailable"
        assert frontend.get("/readyz")[0] == 503
        broker = start_broker(["--model", str(tiny_bert_dir)], workers=1, folder=tmp_path, frontend=endpoint)
        broker.wait_ready()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, _, _ = frontend.post("/model/", {"sequence": "a great film", "n_steps": 2})
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200
        assert frontend.get("/readyz")[0] == 200
    finally:
        frontend.stop()
        if broker:
            broker.stop()


def test_readyz_names_a_model_that_cannot_load_and_why(tmp_path):
    """An expected model whose workers fail to load is named in /readyz with
    the loader's own words (needs the broker's ``load_error``)."""
    (tmp_path / "empty-model").mkdir()
    broker = start_broker(["--model", str(tmp_path / "empty-model"), "--name", "broken"], workers=1,
                          folder=tmp_path)
    frontend = None
    try:
        frontend = start_frontend(broker.frontend, folder=tmp_path)

        def load_error_reported():
            status, headers, raw = frontend.get("/readyz")
            body = json.loads(raw)
            return (status, headers, body) if body.get("missing", [{}])[0].get("load_error") else None

        status, headers, body = wait_until(load_error_reported, 60, "/readyz to report the load error")
        assert status == 503 and headers["retry-after"] == "1" and body["code"] == "not_ready"
        assert body["missing"][0]["model"] == "broken" and body["missing"][0]["expected"] is True
        assert "broken" in body["description"] and "config.json" in body["description"]
    finally:
        if frontend:
            frontend.stop()
        broker.stop()
