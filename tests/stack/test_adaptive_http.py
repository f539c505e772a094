"""n_steps "auto" through the real stack: gunicorn, broker and a worker process."""

from __future__ import annotations

import gzip
import io
import json

import pytest
import torch

from intgrads_zmq.testing.stack import running_stack

AUTO_KEYS = ("n_steps", "nodes_used", "method", "tolerance", "error_estimate", "completeness",
             "converged", "alphas", "step_sizes")  # fmt: skip
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def stack(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adaptive-stack")
    with running_stack(["--model", str(tiny_bert_dir), "--name", "tiny", "--baseline", "pad", "--n-steps", "auto"],
                       folder=folder) as (_, frontend):  # fmt: skip
        yield frontend


def test_auto_in_json_and_torch_formats(stack):
    request = {"sequence": "a great film , not boring !", "n_steps": "auto", "tolerance": 0.01}
    status, _, body = stack.post("/model/?format=json", request)
    assert status == 200, body[:300]
    data = json.loads(body)
    assert all(key in data for key in AUTO_KEYS)
    assert data["method"] == "gausskronrod_adaptive" and data["tolerance"] == 0.01 and data["converged"] is True
    assert data["error_estimate"] <= 0.01 and data["completeness"] <= 0.01
    assert data["alphas"] == sorted(data["alphas"]) and len(data["alphas"]) == data["nodes_used"]
    assert data["n_steps"] >= data["nodes_used"]

    status, _, body = stack.post("/model/", request)
    assert status == 200
    grads = torch.load(io.BytesIO(gzip.decompress(body)), weights_only=True)
    assert grads["method"] == "gausskronrod_adaptive" and grads["n_steps"] == data["n_steps"]
    n = data["nodes_used"]
    assert grads["intermediate_gradients"].shape[0] == grads["step_sizes"].shape[0] == n
    # The seed's recipe, with x - x' recovered from two path points and their alphas.
    alphas, points = data["alphas"], grads["intermediates"]
    diff = (points[-1:] - points[:1]) / (alphas[-1] - alphas[0])
    recipe = (grads["intermediate_gradients"] * grads["step_sizes"][:, :, None]).sum(0) * diff
    ig = grads["integrated_gradients"]
    torch.testing.assert_close(recipe, ig, rtol=0, atol=64 * EPS32 * float(ig.abs().max()) * n)


def test_bad_tolerance_is_a_400_naming_the_field(stack):
    status, _, body = stack.post("/model/", {"sequence": "a film", "n_steps": "auto", "tolerance": 2})
    error = json.loads(body)
    assert status == 400 and error["field"] == "tolerance" and "tolerance" in error["description"]


def test_server_default_auto_and_a_request_for_a_fixed_number(stack):
    """--n-steps auto makes auto the default; an integer in the request still wins."""
    status, _, body = stack.post("/model/?format=json", {"sequence": "a great film"})
    assert status == 200 and json.loads(body)["method"] == "gausskronrod_adaptive"
    status, _, body = stack.post("/model/?format=json", {"sequence": "a great film", "n_steps": 7})
    data = json.loads(body)
    assert status == 200 and data["n_steps"] == 7 and data["method"] == "gausslegendre"
    assert "error_estimate" not in data and len(data["alphas"]) == 7
