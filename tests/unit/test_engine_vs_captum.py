"""Integrated gradients agree with Captum's LayerIntegratedGradients.

For every baseline kind and every method, on a tiny BERT, a tiny XLNet and
the demo model, within 1e-5 relative (float32). Captum's trapezoid result is
scaled by n/(n-1): its weights sum to (n-1)/n (see engine/rules.py).
"""

import pytest
import torch

from intgrads_zmq.engine import attribute
from intgrads_zmq.engine.baselines import make_baseline
from intgrads_zmq.options import BASELINES, METHODS, AttributionOptions
from intgrads_zmq.testing.reference import captum_reference

TEXT = "a great film , not boring !"
N_STEPS = 12
TENSOR_BASELINES = ("zero", "rand-norm", "rand-unif")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def _check(adapter, method, baseline, target=1, seed=7):
    options = AttributionOptions(n_steps=N_STEPS, method=method, baseline=baseline, target=target, seed=seed)
    result = attribute(adapter, TEXT, options)
    encoded = adapter.encode(TEXT, 512)
    tensor = None
    if baseline in TENSOR_BASELINES:
        layer_input = adapter.layer_output(encoded.input_ids, encoded)
        tensor = make_baseline(adapter, encoded, baseline, seed, layer_input)
    reference = captum_reference(
        adapter, TEXT, target=target, n_steps=N_STEPS, method=method,
        baseline_kind=baseline, baseline_tensor=tensor,
    )
    if method == "riemann_trapezoid":
        reference = reference * N_STEPS / (N_STEPS - 1)
    ours = result.tensors["integrated_gradients"]
    assert ours.shape == reference.shape == (1, encoded.length, ours.shape[-1])
    assert relative_error(ours, reference) < 1e-5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("baseline", BASELINES)
def test_tiny_bert(tiny_bert, method, baseline):
    _check(tiny_bert, method, baseline)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("baseline", BASELINES)
def test_tiny_xlnet(tiny_xlnet, method, baseline):
    _check(tiny_xlnet, method, baseline, target=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("baseline", BASELINES)
def test_demo_model(demo, method, baseline):
    _check(demo, method, baseline)
