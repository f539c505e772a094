"""The one pass over the integration path.

Each chunk of path points x' + a(x - x') goes forward and back once. From the
same gradients come all four outputs: the per-step gradients (kept on the
CPU as they are made), the weighted sum that gives the integrated gradients,
and the integrand per step (for the "was n_steps enough" plot). The original
server ran the whole path twice to get the same things.

What is differentiated is given as a readout matrix R (see
:mod:`.objective`): one row per explained function F_k = R[k] . logits. A
chunk goes forward once and back once per row, on the same graph; every
result below carries that row axis first (K = 1 for one target or a
contrast, K = classes for ``target: "all"``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OutOfMemory
from ..models.base import ClassifierAdapter, EncodedText
from .memory import ChunkPlanner

BeforeChunk = Callable[[int], None]


@dataclass
class PathProgress:
    """Steps paid so far and the total planned, updated before each chunk's hook call.

    The hook keeps its one-argument form (the chunk's size); a hook that wants
    to report progress closes over this object. ``total`` can grow between
    rounds of an adaptive integration.
    """

    done: int = 0
    total: int = 0


@dataclass
class PathResult:
    """Everything the pass produced, on the CPU, float32; K = readout rows."""

    weighted_gradients: torch.Tensor  # (K, G, T, H): sum_k w_k g_k over each group's nodes (G = 1: all)
    gradients: torch.Tensor | None  # (K, n, T, H) if kept
    integrand: np.ndarray  # (K, n): sum over tokens and hidden of g_k * (x - x')
    token_integrand: np.ndarray  # (K, n, T): sum over hidden of g_k * (x - x'), float64
    chunk_steps: int
    chunks: int


def precision_context(dtype: str, device: torch.device) -> Callable[[], ContextManager]:
    """Autocast to bf16 when asked; float32 runs as is."""
    if dtype == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def target_gradients(
    adapter: ClassifierAdapter,
    encoded: EncodedText,
    points: torch.Tensor,
    readout: torch.Tensor,
    precision: Callable[[], ContextManager],
) -> torch.Tensor:
    """d F_k / d points for each readout row k, a batch of independent points:
    ``(K, B, T, H)`` from one forward and K backwards on the same graph
    (kept with ``retain_graph`` until the last)."""
    points = points.detach().requires_grad_(True)
    rows = readout.shape[0]
    grads = []
    with torch.enable_grad():
        with precision():
            logits = adapter.logits_from_layer(points, encoded)
        objectives = logits.float() @ readout.T  # (B, K); exact for one-hot rows
        for row in range(rows):
            (grad,) = torch.autograd.grad(objectives[:, row].sum(), points, retain_graph=row < rows - 1)
            grads.append(grad)
    return torch.stack(grads)


def integrate_path(
    adapter: ClassifierAdapter,
    encoded: EncodedText,
    layer_input: torch.Tensor,
    baseline: torch.Tensor,
    alphas: np.ndarray,
    weights: np.ndarray,
    readout: torch.Tensor,
    *,
    planner: ChunkPlanner,
    dtype: str,
    keep_gradients: bool,
    before_chunk: BeforeChunk | None = None,
    progress: PathProgress | None = None,
    groups: np.ndarray | None = None,
) -> PathResult:
    """Run the path in memory-bounded chunks; halve a chunk that runs out of memory.

    ``readout`` is R, ``(K, classes)`` on the model's device (see :mod:`.objective`).
    ``groups`` (optional, one index 0..G-1 per node) splits the weighted sum by
    group, so that a caller that needs sums over sets of nodes (the adaptive
    rule's sub-intervals) need not keep every node's gradients.
    """
    device = layer_input.device
    n_steps = len(alphas)
    rows = readout.shape[0]
    tokens, width = layer_input.shape[1], layer_input.shape[2]
    diff = layer_input - baseline
    alpha_dev = torch.as_tensor(alphas, dtype=torch.float32, device=device)
    weight_dev = torch.as_tensor(weights, dtype=torch.float32, device=device)
    precision = precision_context(dtype, device)
    hints = adapter.size_hints()

    group_dev = None if groups is None else torch.as_tensor(groups, dtype=torch.long, device=device)
    group_count = 1 if groups is None else int(groups.max()) + 1
    weighted = torch.zeros((rows, group_count, tokens, width), dtype=torch.float32, device=device)
    integrand = torch.empty((rows, n_steps), dtype=torch.float64, device=device)
    token_integrand = torch.empty((rows, n_steps, tokens), dtype=torch.float64, device=device)
    gradients = None
    if keep_gradients:
        pin = device.type == "cuda"
        gradients = torch.empty((rows, n_steps, tokens, width), dtype=torch.float32, pin_memory=pin)

    chunk = planner.chunk_steps(hints, tokens, n_steps, dtype)
    start, chunks = 0, 0
    while start < n_steps:
        stop = min(n_steps, start + chunk)
        try:
            if before_chunk is not None:
                before_chunk(stop - start)
            points = baseline + alpha_dev[start:stop, None, None] * diff
            grads = target_gradients(adapter, encoded, points, readout, precision)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _release_memory(device)
            if chunk == 1:
                raise OutOfMemory(
                    f"one path step of a {tokens}-token input does not fit in memory"
                ) from exc
            planner.learn_oom(chunk, tokens, hints, dtype)
            chunk = max(1, chunk // 2)
            continue
        for row in range(rows):  # per row, exactly the arithmetic of a single target
            row_grads = grads[row]
            if group_dev is None:
                weighted[row] += (row_grads * weight_dev[start:stop, None, None]).sum(0, keepdim=True)
            else:
                weighted[row].index_add_(0, group_dev[start:stop], row_grads * weight_dev[start:stop, None, None])
            integrand[row, start:stop] = (row_grads * diff).sum(dim=(1, 2), dtype=torch.float64)
            token_integrand[row, start:stop] = (row_grads * diff).sum(dim=2, dtype=torch.float64)
            if gradients is not None:
                gradients[row, start:stop].copy_(row_grads, non_blocking=True)
        del grads, points
        if progress is not None:
            progress.done += stop - start
        start = stop
        chunks += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return PathResult(
        weighted_gradients=weighted.cpu(),
        gradients=gradients,
        integrand=integrand.cpu().numpy(),
        token_integrand=token_integrand.cpu().numpy(),
        chunk_steps=chunk,
        chunks=chunks,
    )


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()

