"""n_steps "auto": the Gauss-Kronrod rule, validation, accuracy against a converged
reference, the budget, and the engine's chunking, OOM halving and bf16 under it."""

import numpy as np
import pytest
import torch

from intgrads_zmq.engine import ChunkPlanner, attribute
from intgrads_zmq.engine.adaptive import KRONROD_POINTS, interval_nodes
from intgrads_zmq.engine.kronrod import gauss_kronrod
from intgrads_zmq.engine.path import PathProgress
from intgrads_zmq.errors import BadRequest
from intgrads_zmq.options import (
    ADAPTIVE_METHOD,
    AttributionOptions,
    Limits,
    parse_request,
    resolve_options,
)

TEXT = "a great film , not boring !"
AUTO_KEYS = {"n_steps", "nodes_used", "method", "tolerance", "error_estimate", "completeness",
             "converged", "alphas", "step_sizes"}  # fmt: skip
EPS32 = torch.finfo(torch.float32).eps


def reference(adapter, text, baseline, steps=256):
    options = AttributionOptions(n_steps=steps, baseline=baseline, seed=3, fields=("integrated_gradients",))
    return np.array(attribute(adapter, text, options).meta["attributions"])


def relative_error(result, ref):
    return float(np.linalg.norm(np.array(result.meta["attributions"]) - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("n", [5, 7, 10])
def test_kronrod_rule_is_exact_to_degree_3n_plus_1_and_contains_gauss(n):
    nodes, kronrod_w, gauss_w = gauss_kronrod(n)
    assert len(nodes) == 2 * n + 1 and np.all(np.diff(nodes) > 0) and np.all(kronrod_w > 0)
    assert np.count_nonzero(gauss_w) == n
    np.testing.assert_allclose(nodes[gauss_w > 0], np.polynomial.legendre.leggauss(n)[0], atol=1e-14)
    for k in range(3 * n + 2):
        exact = (1 - (-1) ** (k + 1)) / (k + 1)
        assert kronrod_w @ nodes**k == pytest.approx(exact, abs=1e-13)
    assert gauss_w @ nodes ** (2 * n) != pytest.approx(2 / (2 * n + 1), abs=1e-6)  # Gauss stops at 2n-1
    alphas, weights, _ = interval_nodes(0.25, 0.5)
    assert alphas.min() > 0.25 and alphas.max() < 0.5 and weights.sum() == pytest.approx(0.25)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"n_steps": "auto", "tolerance": 0}, "tolerance"),
        ({"n_steps": "auto", "tolerance": 0.9}, "tolerance"),
        ({"n_steps": "auto", "tolerance": "1%"}, "tolerance"),
        ({"n_steps": "auto", "tolerance": True}, "tolerance"),
        ({"n_steps": "auto", "tolerance": float("nan")}, "tolerance"),
        ({"n_steps": "automatic"}, "n_steps"),
        ({"n_steps": "auto", "method": "riemann_left"}, "method"),
        ({"n_steps": 1, "method": "riemann_trapezoid"}, "n_steps"),
    ],
)
def test_bad_auto_requests_name_the_field(body, field):
    with pytest.raises(BadRequest) as caught:
        parse_request({"sequence": "a film", **body}, Limits())
    assert caught.value.field == field


def test_defaults_and_requests_combine():
    limits = Limits(max_steps=120)
    auto_default = AttributionOptions(**{"n_steps": "auto", "method": "gausslegendre", "baseline": "pad"})
    assert resolve_options({}, auto_default, limits).adaptive
    assert resolve_options({}, auto_default, limits).step_budget == 120
    assert resolve_options({"n_steps": 20}, auto_default, limits).n_steps == 20
    fixed = resolve_options({"n_steps": "auto", "tolerance": 0.05}, AttributionOptions(), limits)
    assert fixed.adaptive and fixed.tolerance == 0.05
    with pytest.raises(BadRequest) as caught:  # a fixed-grid method needs a number of steps
        resolve_options({"method": "riemann_middle"}, auto_default, limits)
    assert caught.value.field == "method"
    with pytest.raises(BadRequest):
        resolve_options({"step_budget": 10_000}, auto_default, limits)


@pytest.mark.parametrize("baseline", ["pad", "unk", "rand-norm", "rand-unif"])
@pytest.mark.parametrize("model", ["tiny_bert", "tiny_xlnet"])
def test_auto_agrees_with_a_converged_reference(request, model, baseline):
    adapter = request.getfixturevalue(model)
    options = AttributionOptions(n_steps="auto", tolerance=0.01, baseline=baseline, seed=3)
    result = attribute(adapter, TEXT, options)
    meta = result.meta
    assert AUTO_KEYS <= set(meta) and meta["method"] == ADAPTIVE_METHOD and meta["converged"]
    assert relative_error(result, reference(adapter, TEXT, baseline)) <= 0.01
    assert meta["error_estimate"] <= 0.01 and meta["completeness"] <= 0.01
    assert meta["alphas"] == sorted(meta["alphas"]) and meta["nodes_used"] == len(meta["alphas"])
    assert meta["n_steps"] >= meta["nodes_used"] and meta["n_steps"] % KRONROD_POINTS == 0


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_xlnet"])
def test_no_false_convergence_where_no_rule_converges(request, model):
    """The random tiny models' integrand from a zero baseline is concentrated at
    alpha ~ 0 (on tiny BERT, 256 Gauss-Legendre steps are still 18 % away from
    1000): auto must spend its budget and say it did not converge."""
    adapter = request.getfixturevalue(model)
    options = AttributionOptions(n_steps="auto", baseline="zero", step_budget=120)
    meta = attribute(adapter, TEXT, options).meta
    assert meta["converged"] is False and 120 - 2 * KRONROD_POINTS < meta["n_steps"] <= 120
    assert meta["error_estimate"] > 0.01 or meta["completeness"] > 0.01


@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_auto_on_the_demo_model(demo, baseline):
    text = "The plot made no sense and the acting was wooden."
    result = attribute(demo, text, AttributionOptions(n_steps="auto", tolerance=0.01, baseline=baseline))
    assert result.meta["converged"]
    assert relative_error(result, reference(demo, text, baseline)) <= 0.01


def test_seed_recipe_holds_exactly_and_intermediates_are_the_path(tiny_xlnet):
    result = attribute(tiny_xlnet, TEXT, AttributionOptions(n_steps="auto", baseline="zero"))
    t, meta = result.tensors, result.meta
    n = meta["nodes_used"]
    assert t["intermediate_gradients"].shape[0] == n == t["step_sizes"].shape[0] == t["intermediates"].shape[0]
    assert t["step_sizes"].view(-1).tolist() == pytest.approx(meta["step_sizes"], rel=EPS32)
    assert float(t["step_sizes"].sum()) == pytest.approx(1.0, rel=4 * EPS32 * n)
    diff = t["intermediates"][-1:] - t["intermediates"][:1]  # x - x' scaled by the alpha gap
    span = meta["alphas"][-1] - meta["alphas"][0]
    recipe = (t["intermediate_gradients"] * t["step_sizes"][:, :, None]).sum(0) * (diff / span)
    scale = float(t["integrated_gradients"].abs().max())
    torch.testing.assert_close(recipe, t["integrated_gradients"], rtol=0, atol=64 * EPS32 * scale)


def test_seed_recipe_is_bit_exact_with_the_true_difference(tiny_bert):
    options = AttributionOptions(n_steps="auto", baseline="zero")  # x' = 0, so x - x' = x
    result = attribute(tiny_bert, TEXT, options)
    t = result.tensors
    alpha = torch.tensor(result.meta["alphas"], dtype=torch.float32).view(-1, 1, 1)
    x = t["intermediates"] / alpha  # the path is alpha * x
    torch.testing.assert_close(x, x[:1].expand_as(x), rtol=4 * EPS32, atol=0)
    x_true = tiny_bert.layer_output(tiny_bert.encode(TEXT, 512).input_ids, tiny_bert.encode(TEXT, 512)).float()
    recipe = (t["intermediate_gradients"] * t["step_sizes"][:, :, None]).sum(0) * x_true
    assert torch.equal(recipe, t["integrated_gradients"])


def test_integer_steps_are_unchanged_by_the_adaptive_code(tiny_bert):
    result = attribute(tiny_bert, TEXT, AttributionOptions(n_steps=12))
    assert result.meta["n_steps"] == 12 and result.meta["method"] == "gausslegendre"
    assert "error_estimate" not in result.meta and len(result.meta["alphas"]) == 12


def test_a_budget_too_small_is_not_an_error(demo):
    text = "I walked out halfway through; it was that boring."
    options = resolve_options({"n_steps": "auto", "tolerance": 1e-4, "baseline": "zero"},
                              AttributionOptions(), Limits(max_steps=60))  # fmt: skip
    result = attribute(demo, text, options)
    assert result.meta["converged"] is False
    assert result.meta["n_steps"] <= 60 and result.meta["error_estimate"] > 1e-4
    assert np.isfinite(result.meta["attributions"]).all()


def test_chunking_progress_and_oom_halving_under_auto(tiny_bert):
    options = AttributionOptions(n_steps="auto", baseline="pad", tolerance=1e-3)
    whole = attribute(tiny_bert, TEXT, options, planner=ChunkPlanner(budget_bytes=1 << 34))
    progress, seen = PathProgress(), []

    def hook(steps):
        seen.append((steps, progress.done, progress.total))

    single = attribute(tiny_bert, TEXT, options, planner=ChunkPlanner(budget_bytes=1), before_chunk=hook,
                       progress=progress)  # fmt: skip
    assert [s for s, _, _ in seen] == [1] * whole.meta["n_steps"]
    assert [d for _, d, _ in seen] == list(range(whole.meta["n_steps"]))
    assert progress.done == progress.total == whole.meta["n_steps"]
    ig = whole.tensors["integrated_gradients"]
    torch.testing.assert_close(single.tensors["integrated_gradients"], ig, rtol=0,
                               atol=64 * EPS32 * float(ig.abs().max()))  # fmt: skip
    assert single.meta["alphas"] == whole.meta["alphas"]

    sizes = []

    def oom_above_4(steps):
        sizes.append(steps)
        if steps > 4:
            raise torch.OutOfMemoryError("simulated: out of memory")

    planner = ChunkPlanner(budget_bytes=1 << 34)
    halved = attribute(tiny_bert, TEXT, options, planner=planner, before_chunk=oom_above_4)
    first = 2 * KRONROD_POINTS  # the first round: two sub-intervals
    assert sizes[:3] == [first, first // 2, first // 4] and max(sizes[3:]) <= 4 and planner.shrink < 1.0
    assert halved.meta["alphas"] == whole.meta["alphas"]
    torch.testing.assert_close(halved.tensors["integrated_gradients"], ig, rtol=0,
                               atol=64 * EPS32 * float(ig.abs().max()))  # fmt: skip


def test_bf16_auto_stays_close_to_the_float32_reference(demo):
    text = "A beautiful, moving film with wonderful performances."
    options = AttributionOptions(n_steps="auto", tolerance=0.02, baseline="pad")
    result = attribute(demo, text, options, dtype="bf16")
    assert result.meta["dtype"] == "bf16" and result.meta["n_steps"] <= 300
    # bf16 keeps ~3 significant digits per gradient; the path error stays within a few percent.
    assert relative_error(result, reference(demo, text, "pad")) <= 0.05
