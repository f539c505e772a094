"""Integration rules: where on the path to evaluate, and with what weight.

Names follow Captum's. One deliberate difference: Captum's
``riemann_trapezoid`` puts n points at spacing 1/(n-1) but weights them 1/n
(ends halved), so its weights sum to (n-1)/n and every attribution comes out
short by that factor. Here the trapezoid weights are the true ones, 1/(n-1)
with the ends halved, and they sum to 1 like every other rule.
"""

from __future__ import annotations

import numpy as np

from ..options import METHODS, check_steps_for_method


def path_rule(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(alphas, weights)`` in float64, each of length ``n_steps``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    check_steps_for_method(n_steps, method)
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    if method == "riemann_trapezoid":
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] *= 0.5
        return np.linspace(0.0, 1.0, n), weights
    weights = np.full(n, 1.0 / n)
    if method == "riemann_left":
        return np.arange(n) / n, weights
    if method == "riemann_right":
        return (np.arange(n) + 1.0) / n, weights
    return (np.arange(n) + 0.5) / n, weights  # riemann_middle
