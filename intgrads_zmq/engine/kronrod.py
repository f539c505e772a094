"""The 7-point Gauss / 15-point Kronrod pair, derived rather than tabulated.

The Kronrod rule keeps the 7 Gauss-Legendre nodes and adds the 8 zeros of
the Stieltjes polynomial E_8, the degree-8 polynomial orthogonal to every
polynomial of lower degree under the weight P_7(x). Its weights make the 15
nodes integrate degree 22 exactly, so one set of evaluations gives two
estimates of different accuracy, and their difference an error estimate.
Computed once, in float64, in the Legendre basis (well conditioned at this
size); the exactness is checked on import so a wrong derivation cannot pass
silently.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.polynomial import legendre

GAUSS_POINTS = 7
KRONROD_POINTS = 2 * GAUSS_POINTS + 1


@lru_cache(maxsize=1)
def gauss_kronrod() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(nodes, kronrod_weights, gauss_weights)`` on [-1, 1], nodes ascending.

    ``gauss_weights`` is zero at the added Kronrod nodes, so both rules are
    dot products with the same 15 function values.
    """
    n = GAUSS_POINTS
    x, w = legendre.leggauss(40)  # exact for the degree <= 22 products below
    basis = np.stack([legendre.legval(x, np.eye(n + 2)[k]) for k in range(n + 2)])  # P_0..P_8
    p_n = basis[n]
    # E = P_8 + sum_{k<8} b_k P_k with  integral E * P_n * P_j = 0 for j < 8.
    gram = np.einsum("kq,jq,q->jk", basis[: n + 1], basis[: n + 1] * p_n, w)
    rhs = -np.einsum("q,jq,q->j", basis[n + 1], basis[: n + 1] * p_n, w)
    coeffs = np.append(np.linalg.lstsq(gram, rhs, rcond=None)[0], 1.0)
    stieltjes = np.sort(legendre.legroots(coeffs).real)
    gauss_nodes, gauss_w = legendre.leggauss(n)
    nodes = np.sort(np.concatenate([gauss_nodes, stieltjes]))
    # Weights: integrate P_0..P_14 exactly on the 15 nodes (P_0 integrates to 2).
    vander = legendre.legvander(nodes, KRONROD_POINTS - 1).T
    moments = np.zeros(KRONROD_POINTS)
    moments[0] = 2.0
    kronrod_w = np.linalg.solve(vander, moments)
    gauss_full = np.zeros(KRONROD_POINTS)
    for node, weight in zip(gauss_nodes, gauss_w, strict=True):
        gauss_full[np.argmin(np.abs(nodes - node))] = weight
    _check_exactness(nodes, kronrod_w, 3 * n + 1)
    return nodes, kronrod_w, gauss_full


def _check_exactness(nodes: np.ndarray, weights: np.ndarray, degree: int) -> None:
    for k in range(degree + 1):
        exact = (1.0 - (-1.0) ** (k + 1)) / (k + 1)
        if abs(float(weights @ nodes**k) - exact) > 1e-12:
            raise ArithmeticError(f"Kronrod rule is not exact for x^{k}")
