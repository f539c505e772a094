"""Gauss / Kronrod pairs (n Gauss nodes, 2n+1 Kronrod nodes), derived rather than tabulated.

The Kronrod rule keeps the n Gauss-Legendre nodes and adds the n+1 zeros of
the Stieltjes polynomial E_{n+1}, the polynomial orthogonal to every
polynomial of lower degree under the weight P_n(x). Its weights make the
2n+1 nodes integrate degree 3n+1 exactly (22 for the 7/15 pair), so one set of evaluations gives two
estimates of different accuracy, and their difference an error estimate.
Computed once, in float64, in the Legendre basis (well conditioned at this
size); the exactness is checked on import so a wrong derivation cannot pass
silently.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.polynomial import legendre


@lru_cache(maxsize=4)
def gauss_kronrod(n: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(nodes, kronrod_weights, gauss_weights)`` on [-1, 1], nodes ascending.

    ``gauss_weights`` is zero at the added Kronrod nodes, so both rules are
    dot products with the same 2n+1 function values.
    """
    x, w = legendre.leggauss(3 * n + 20)  # exact for the degree <= 3n+1 products below
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
    vander = legendre.legvander(nodes, 2 * n).T
    moments = np.zeros(2 * n + 1)
    moments[0] = 2.0
    kronrod_w = np.linalg.solve(vander, moments)
    gauss_full = np.zeros(2 * n + 1)
    for node, weight in zip(gauss_nodes, gauss_w, strict=True):
        gauss_full[np.argmin(np.abs(nodes - node))] = weight
    _check_exactness(nodes, kronrod_w, 3 * n + 1)
    return nodes, kronrod_w, gauss_full


def _check_exactness(nodes: np.ndarray, weights: np.ndarray, degree: int) -> None:
    for k in range(degree + 1):
        exact = (1.0 - (-1.0) ** (k + 1)) / (k + 1)
        if abs(float(weights @ nodes**k) - exact) > 1e-12:
            raise ArithmeticError(f"Kronrod rule is not exact for x^{k}")
