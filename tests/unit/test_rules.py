"""Integration rules: Captum's points and weights, and the trapezoid fix."""

import numpy as np
import pytest
from captum.attr._utils.approximation_methods import approximation_parameters

from intgrads_zmq.engine.rules import path_rule
from intgrads_zmq.errors import BadRequest
from intgrads_zmq.options import METHODS


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [2, 7, 50])
def test_weights_sum_to_one_and_points_in_unit_interval(method, n):
    alphas, weights = path_rule(method, n)
    assert len(alphas) == len(weights) == n
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all((alphas >= 0) & (alphas <= 1))


@pytest.mark.parametrize("method", METHODS)
def test_points_match_captum_and_weights_too_except_trapezoid(method):
    n = 20
    step_fn, alpha_fn = approximation_parameters(method)
    alphas, weights = path_rule(method, n)
    np.testing.assert_allclose(alphas, alpha_fn(n), atol=1e-6)
    captum_weights = np.asarray(step_fn(n))
    if method == "riemann_trapezoid":
        # Captum's trapezoid weights sum to (n-1)/n; ours are the true ones.
        assert captum_weights.sum() == pytest.approx((n - 1) / n)
        np.testing.assert_allclose(weights, captum_weights * n / (n - 1), rtol=1e-12)
    else:
        np.testing.assert_allclose(weights, captum_weights, rtol=1e-6)


def test_trapezoid_is_exact_for_lines_and_converges_like_h_squared():
    alphas, weights = path_rule("riemann_trapezoid", 11)
    assert np.dot(weights, 3 * alphas + 1) == pytest.approx(2.5)
    errors = []
    for n in (11, 21):
        a, w = path_rule("riemann_trapezoid", n)
        errors.append(abs(np.dot(w, np.exp(a)) - (np.e - 1)))
    assert errors[0] / errors[1] == pytest.approx(4, rel=0.05)


def test_gauss_legendre_integrates_polynomials_exactly():
    alphas, weights = path_rule("gausslegendre", 5)
    assert np.dot(weights, alphas**9) == pytest.approx(1 / 10, rel=1e-12)


def test_unknown_method_and_short_trapezoid_are_refused():
    with pytest.raises(ValueError):
        path_rule("simpson", 10)
    with pytest.raises(BadRequest, match="at least 2") as caught:
        path_rule("riemann_trapezoid", 1)
    assert caught.value.field == "n_steps"
