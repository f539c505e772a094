"""The engine under issue 14's options, against references computed apart:

* ``target: "all"`` equals one single-target run per class (1e-6 relative),
  with the documented shapes, and agrees with Captum's LayerIntegratedGradients
  run once per class;
* a contrast equals the difference of the two single-target attributions, its
  F is logit[target] - logit[contrast] from the model's own forward, and
  completeness holds for it;
* the ``mask`` baseline is the model's mask token everywhere, and a model
  without one is refused naming ``baseline``;
* ``n_steps: "auto"`` with several functions stops only when every one of
  them meets the tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from intgrads_zmq.engine import attribute
from intgrads_zmq.engine.adaptive import KRONROD_POINTS, integrate_adaptive
from intgrads_zmq.engine.path import PathProgress, PathResult
from intgrads_zmq.errors import BadRequest
from intgrads_zmq.options import AttributionOptions
from intgrads_zmq.testing.reference import captum_reference

TEXT = "a great film , not boring !"
LABELS5 = ("awful", "bad", "fine", "good", "great")
EPS32 = torch.finfo(torch.float32).eps
PER_CLASS_META = ("target", "target_label", "f_input", "f_baseline", "attribution_sum", "completeness_error",
                  "relative_completeness_error", "attributions", "path_integrand")  # fmt: skip


@pytest.fixture(scope="module")
def bert5(tmp_path_factory):
    from intgrads_zmq.models.loader import load_model
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.testing.tiny_models import make_tiny_bert

    folder = make_tiny_bert(tmp_path_factory.mktemp("bert5"), labels=LABELS5, seed=3)
    return load_model(ModelSpec(kind="hf", path=str(folder), name="bert5"), torch.device("cpu"))


def model_logits(adapter, ids: torch.Tensor, encoded) -> torch.Tensor:
    """Logits from the Hugging Face model's own forward (not the adapter's path code)."""
    with torch.no_grad():
        return adapter.model(input_ids=ids, **encoded.extras).logits[0].double()


def close_relative(ours: torch.Tensor, reference: torch.Tensor, rel: float) -> None:
    assert ours.shape == reference.shape
    scale = float(reference.abs().max())
    assert float((ours - reference).abs().max()) <= rel * scale


# -- target "all" ----------------------------------------------------------------


@pytest.mark.parametrize("model, steps, baseline", [("bert5", 9, "pad"), ("bert5", "auto", "pad"),
                                                    ("tiny_xlnet", 7, "rand-norm")])
def test_all_equals_one_run_per_class(request, model, steps, baseline):
    adapter = request.getfixturevalue(model)
    every = attribute(adapter, TEXT, AttributionOptions(n_steps=steps, baseline=baseline, seed=2, target="all"))
    classes, tokens = len(adapter.labels), len(every.meta["tokens"])
    hidden, n = adapter.size_hints()["hidden"], len(every.meta["alphas"])
    t = every.tensors
    assert t["integrated_gradients"].shape == (classes, 1, tokens, hidden)
    assert t["intermediate_gradients"].shape == (classes, n, tokens, hidden)
    assert t["step_sizes"].shape == (n, 1) and t["intermediates"].shape == (n, tokens, hidden)
    meta = every.meta
    assert meta["target"] == list(range(classes)) and meta["target_label"] == list(adapter.labels)
    for key in PER_CLASS_META:
        assert isinstance(meta[key], list) and len(meta[key]) == classes, key
    assert np.array(meta["attributions"]).shape == (classes, tokens)
    assert np.array(meta["path_integrand"]).shape == (classes, n)
    for c in range(classes):
        if steps == "auto":  # the nodes "all" chose (every class within tolerance), for class c alone
            one = attribute(adapter, TEXT, AttributionOptions(n_steps=2, baseline=baseline, seed=2, target=c))
            one_ig = _fixed_rule_ig(adapter, TEXT, meta["alphas"], meta["step_sizes"], c, baseline)
        else:
            one = attribute(adapter, TEXT, AttributionOptions(n_steps=steps, baseline=baseline, seed=2, target=c))
            one_ig = one.tensors["integrated_gradients"]
            close_relative(t["intermediate_gradients"][c], one.tensors["intermediate_gradients"], 1e-6)
            assert meta["attributions"][c] == pytest.approx(one.meta["attributions"], rel=1e-6, abs=1e-12)
            assert meta["completeness_error"][c] == pytest.approx(one.meta["completeness_error"], rel=1e-6,
                                                                  abs=1e-9)
        close_relative(t["integrated_gradients"][c], one_ig, 1e-6)
        assert meta["f_input"][c] == one.meta["f_input"] and meta["f_baseline"][c] == one.meta["f_baseline"]
        assert meta["target"][c] == one.meta["target"] == c
    assert meta["predicted"] == int(np.argmax(meta["probabilities"]))


def _fixed_rule_ig(adapter, text, alphas, weights, target, baseline):
    """IG for one target at given nodes and weights, through the path code alone,
    summed as the adaptive reply sums it (the seed's recipe)."""
    from intgrads_zmq.engine.baselines import make_baseline
    from intgrads_zmq.engine.memory import ChunkPlanner
    from intgrads_zmq.engine.objective import Objective
    from intgrads_zmq.engine.path import integrate_path

    encoded = adapter.encode(text, 512)
    x = adapter.layer_output(encoded.input_ids, encoded).float()
    x0 = make_baseline(adapter, encoded, baseline, 2, x)
    readout = Objective((target,)).readout(len(adapter.labels))
    path = integrate_path(adapter, encoded, x, x0, np.array(alphas), np.array(weights), readout,
                          planner=ChunkPlanner(), dtype="float32", keep_gradients=True)  # fmt: skip
    step_sizes = torch.tensor(weights, dtype=torch.float32).view(-1, 1)
    return (path.gradients[0] * step_sizes[:, :, None]).sum(0) * (x - x0)


@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_all_agrees_with_captum_run_once_per_class(bert5, baseline):
    """Captum's LayerIntegratedGradients with target=c for each class; the
    trapezoid rule, Captum's result scaled by n/(n-1) (DESIGN.md)."""
    n = 12
    ours = attribute(bert5, TEXT, AttributionOptions(n_steps=n, method="riemann_trapezoid", baseline=baseline,
                                                     target="all")).tensors["integrated_gradients"]  # fmt: skip
    tensor = None
    if baseline == "zero":
        encoded = bert5.encode(TEXT, 512)
        tensor = torch.zeros_like(bert5.layer_output(encoded.input_ids, encoded))
    for c in range(len(LABELS5)):
        reference = captum_reference(bert5, TEXT, target=c, n_steps=n, method="riemann_trapezoid",
                                     baseline_kind=baseline, baseline_tensor=tensor) * n / (n - 1)  # fmt: skip
        close_relative(ours[c], reference, 1e-5)


def test_all_with_auto_covers_every_class(bert5):
    """Each class's estimate is within the tolerance, and so is its error against
    a converged 256-node reference."""
    tolerance = 0.01
    every = attribute(bert5, TEXT, AttributionOptions(n_steps="auto", tolerance=tolerance, target="all"))
    meta = every.meta
    assert meta["converged"] is True
    assert len(meta["error_estimate"]) == len(meta["completeness"]) == len(LABELS5)
    assert max(meta["error_estimate"]) <= tolerance and max(meta["completeness"]) <= tolerance
    for c in range(len(LABELS5)):
        ref = np.array(attribute(bert5, TEXT, AttributionOptions(n_steps=256, target=c,
                                                                 fields=())).meta["attributions"])  # fmt: skip
        got = np.array(meta["attributions"][c])
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= tolerance


def fake_nodes(functions):
    """A ``run_nodes`` whose per-token integrands are given functions of alpha
    (one token each), so the adaptive rule can be watched without a model."""

    def run(alphas, weights, groups):
        values = np.stack([[f(a) for a in alphas] for f in functions])[:, :, None]  # (K, n, 1)
        n, count = len(alphas), int(groups.max()) + 1
        weighted = torch.zeros(len(functions), count, 1, 1, dtype=torch.float64)
        for k in range(len(functions)):  # the "gradient" is the integrand itself (x - x' = 1)
            weighted[k, :, 0, 0].index_add_(0, torch.as_tensor(groups), torch.as_tensor(weights * values[k, :, 0]))
        return PathResult(weighted_gradients=weighted, gradients=None, integrand=values[:, :, 0],
                          token_integrand=values, chunk_steps=n, chunks=1)  # fmt: skip

    return run


def test_adaptive_stops_only_when_the_hardest_function_is_within_tolerance():
    smooth = lambda a: 1.0 + a  # noqa: E731 - exact for any Kronrod rule
    sharp = lambda a: np.exp(-(((a - 0.3) / 0.01) ** 2))  # noqa: E731 - a narrow peak
    sharp_integral = 0.01 * np.sqrt(np.pi)
    one = integrate_adaptive(fake_nodes([smooth]), delta=1.5, tolerance=1e-3, budget=3000,
                             progress=PathProgress())  # fmt: skip
    both = integrate_adaptive(fake_nodes([smooth, sharp]), delta=np.array([1.5, sharp_integral]),
                              tolerance=1e-3, budget=3000, progress=PathProgress())  # fmt: skip
    assert one.converged and one.evaluations == 2 * KRONROD_POINTS
    assert both.converged and both.evaluations > 4 * one.evaluations
    assert both.error_estimates.shape == both.completenesses.shape == (2,)
    assert np.all(both.error_estimates <= 1e-3)
    achieved = abs(float(both.weights @ np.array([sharp(a) for a in both.alphas])) - sharp_integral)
    assert achieved / sharp_integral <= 1e-3
    # the kept sub-intervals' weighted sums are the integral of the nodes returned
    assert float(both.weighted[1].sum()) == pytest.approx(float(both.weights @ [sharp(a) for a in both.alphas]),
                                                          rel=1e-12)  # fmt: skip
    assert float(both.weighted[0].sum()) == pytest.approx(1.5, rel=1e-12)
    assert both.integrand.shape == (2, len(both.alphas)) and both.gradients is None
    # With a budget too small for the sharp one, "all" does not claim convergence.
    poor = integrate_adaptive(fake_nodes([smooth, sharp]), delta=np.array([1.5, sharp_integral]),
                              tolerance=1e-3, budget=44, progress=PathProgress())  # fmt: skip
    assert not poor.converged and poor.error_estimates[1] > 1e-3 >= poor.error_estimates[0]


# -- contrast ------------------------------------------------------------------------


@pytest.mark.parametrize("target, contrast", [(3, 1), ("great", "awful")])
def test_contrast_is_the_difference_of_two_targets(bert5, target, contrast):
    options = {"n_steps": 16, "baseline": "pad"}
    result = attribute(bert5, TEXT, AttributionOptions(**options, target=target, contrast=contrast))
    t_index, c_index = result.meta["target"], result.meta["contrast"]
    assert result.meta["contrast_label"] == LABELS5[c_index] and t_index != c_index
    a = attribute(bert5, TEXT, AttributionOptions(**options, target=t_index)).tensors
    b = attribute(bert5, TEXT, AttributionOptions(**options, target=c_index)).tensors
    for name in ("integrated_gradients", "intermediate_gradients"):
        difference = a[name] - b[name]
        scale = max(float(a[name].abs().max()), float(b[name].abs().max()))
        assert result.tensors[name].shape == difference.shape
        # one backward of (e_t - e_c) against two backwards subtracted: float32 rounding only
        assert float((result.tensors[name] - difference).abs().max()) <= 64 * EPS32 * scale
    torch.testing.assert_close(result.tensors["intermediates"], a["intermediates"], rtol=0, atol=0)


def test_contrast_completeness_holds_for_the_logit_difference(bert5):
    target, contrast = 4, 0
    result = attribute(bert5, TEXT, AttributionOptions(n_steps="auto", tolerance=1e-3, target=target,
                                                       contrast=contrast))  # fmt: skip
    meta = result.meta
    encoded = bert5.encode(TEXT, 512)
    x = model_logits(bert5, encoded.input_ids, encoded)
    x0 = model_logits(bert5, torch.full_like(encoded.input_ids, bert5.special_token_id("pad")), encoded)
    f_input, f_baseline = float(x[target] - x[contrast]), float(x0[target] - x0[contrast])
    assert meta["f_input"] == pytest.approx(f_input, rel=1e-5, abs=1e-5)
    assert meta["f_baseline"] == pytest.approx(f_baseline, rel=1e-5, abs=1e-5)
    total = float(result.tensors["integrated_gradients"].double().sum())
    assert total == pytest.approx(meta["attribution_sum"], rel=1e-6)
    assert meta["completeness_error"] == pytest.approx(abs(total - (meta["f_input"] - meta["f_baseline"])),
                                                       rel=1e-6, abs=1e-12)  # fmt: skip
    assert meta["converged"] and abs(total - (f_input - f_baseline)) <= 1e-3 * abs(f_input - f_baseline) + 1e-4


def test_contrast_against_the_predicted_class_and_its_refusals(bert5):
    predicted = attribute(bert5, TEXT, AttributionOptions(n_steps=2)).meta["predicted"]
    other = (predicted + 1) % len(LABELS5)
    meta = attribute(bert5, TEXT, AttributionOptions(n_steps=2, contrast=other)).meta
    assert meta["target"] == predicted and meta["contrast"] == other
    for bad in (predicted, LABELS5[predicted].upper(), 5, "neutral"):
        with pytest.raises(BadRequest) as caught:
            attribute(bert5, TEXT, AttributionOptions(n_steps=2, contrast=bad))
        assert caught.value.field == "contrast"
    with pytest.raises(BadRequest) as caught:
        attribute(bert5, TEXT, AttributionOptions(n_steps=2, target="all", contrast=1))
    assert caught.value.field == "contrast"


# -- the mask baseline ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_xlnet"])
def test_mask_baseline_is_the_mask_token_everywhere(request, model):
    adapter = request.getfixturevalue(model)
    mask_id = adapter.tokenizer.mask_token_id
    assert mask_id is not None and adapter.tokenizer.convert_ids_to_tokens(mask_id) in ("[MASK]", "<mask>")
    options = AttributionOptions(n_steps=5, method="riemann_left", baseline="mask", target=0)
    result = attribute(adapter, TEXT, options)  # riemann_left: the first point is the baseline itself
    encoded = adapter.encode(TEXT, 512)
    expected = adapter.layer_output(torch.full_like(encoded.input_ids, mask_id), encoded).float()
    torch.testing.assert_close(result.tensors["intermediates"][:1], expected, rtol=0, atol=0)
    if model == "tiny_bert":  # the model's own forward on the all-mask ids
        logits = model_logits(adapter, torch.full_like(encoded.input_ids, mask_id), encoded)
        assert result.meta["f_baseline"] == pytest.approx(float(logits[0]), rel=1e-5, abs=1e-6)
    assert result.meta["baseline"] == "mask"


def test_a_model_without_a_mask_token_is_refused_naming_the_baseline(tiny_bert_dir):
    from intgrads_zmq.models.loader import load_model
    from intgrads_zmq.models.spec import ModelSpec

    adapter = load_model(ModelSpec(kind="hf", path=str(tiny_bert_dir), name="no-mask"), torch.device("cpu"))
    adapter.tokenizer.mask_token = None
    with pytest.raises(BadRequest) as caught:
        attribute(adapter, TEXT, AttributionOptions(n_steps=2, baseline="mask"))
    assert caught.value.field == "baseline" and "mask" in caught.value.description
    assert attribute(adapter, TEXT, AttributionOptions(n_steps=2, baseline="pad")).meta["tokens"]


@pytest.mark.parametrize("target", [1, "all"])
def test_auto_without_intermediate_gradients_keeps_none_and_agrees(bert5, monkeypatch, target):
    """Without ``intermediate_gradients`` the adaptive rule keeps each sub-interval's
    weighted sum only; the integral is the same up to float32 summation order."""
    from intgrads_zmq.engine import attribution

    kept = []
    real = attribution.integrate_path

    def spy(*args, **kwargs):
        kept.append(kwargs["keep_gradients"])
        return real(*args, **kwargs)

    options = {"n_steps": "auto", "tolerance": 0.01, "target": target}
    full = attribute(bert5, TEXT, AttributionOptions(**options))
    monkeypatch.setattr(attribution, "integrate_path", spy)
    lean = attribute(bert5, TEXT, AttributionOptions(**options, fields=("integrated_gradients",)))
    assert kept and not any(kept) and "intermediate_gradients" not in lean.tensors
    assert lean.meta["alphas"] == full.meta["alphas"] and lean.meta["n_steps"] == full.meta["n_steps"]
    ig, reference = lean.tensors["integrated_gradients"], full.tensors["integrated_gradients"]
    n = len(full.meta["alphas"])
    assert float((ig - reference).abs().max()) <= 4 * n * EPS32 * float(reference.abs().max())
