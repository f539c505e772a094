"""From a text and options to integrated and intermediate gradients.

:func:`attribute` is the public entry point: tokenise, build x and x', score
both, pick the target, run the path once, and assemble the four seed outputs
plus what a reader needs to trust them (tokens, probabilities, F(x), F(x'),
the completeness error). Results are CPU float32 tensors and plain data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import BadRequest, DeadlineExceeded
from ..models.base import ClassifierAdapter
from ..options import ADAPTIVE_METHOD, AttributionOptions
from .adaptive import AdaptiveResult, integrate_adaptive
from .baselines import make_baseline
from .memory import ChunkPlanner
from .path import BeforeChunk, PathProgress, integrate_path, precision_context
from .rules import path_rule


@dataclass
class AttributionResult:
    """The tensors asked for (CPU, float32, contiguous) and JSON-able metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def resolve_target(target: int | str | None, labels: list[str], predicted: int) -> int:
    """Class index from an index, a label name, or None (the prediction)."""
    if target is None:
        return predicted
    if isinstance(target, int):
        if not 0 <= target < len(labels):
            raise BadRequest(
                f"'target' {target} is out of range: the model has {len(labels)} classes "
                f"({', '.join(labels)})",
                field="target",
            )
        return target
    if target in labels:
        return labels.index(target)
    lowered = [label.lower() for label in labels]
    if target.lower() in lowered:
        return lowered.index(target.lower())
    raise BadRequest(
        f"'target' {target!r} is not a label of this model; labels: {', '.join(labels)}",
        field="target",
    )


def attribute(
    adapter: ClassifierAdapter,
    text: str,
    options: AttributionOptions,
    *,
    planner: ChunkPlanner | None = None,
    dtype: str = "float32",
    deadline: float | None = None,
    before_chunk: BeforeChunk | None = None,
    progress: PathProgress | None = None,
) -> AttributionResult:
    """Compute every output for ``text`` in one pass over the path.

    With ``n_steps: "auto"`` the pass runs in rounds (see :mod:`.adaptive`);
    ``progress`` (optional) is updated with steps done and planned before
    each chunk's hook call.
    """
    started = time.perf_counter()
    progress = progress if progress is not None else PathProgress()
    hooks = _chunk_hooks(deadline, before_chunk)
    encoded = adapter.encode(text, options.max_length)
    layer_input = adapter.layer_output(encoded.input_ids, encoded).float()
    planner = planner or ChunkPlanner.for_device(layer_input.device.type, dtype)
    baseline = make_baseline(adapter, encoded, options.baseline, options.seed, layer_input)

    precision = precision_context(dtype, layer_input.device)
    with torch.no_grad(), precision():
        ends = adapter.logits_from_layer(torch.cat([layer_input, baseline]), encoded).float()
    probabilities = torch.softmax(ends[0], dim=-1)
    target = resolve_target(options.target, adapter.labels, int(probabilities.argmax()))

    f_input, f_baseline = float(ends[0, target]), float(ends[1, target])
    diff_cpu = (layer_input - baseline).cpu()

    def run_nodes(alphas: Any, weights: Any, keep: bool) -> Any:
        return integrate_path(
            adapter, encoded, layer_input, baseline, alphas, weights, target,
            planner=planner, dtype=dtype, keep_gradients=keep, before_chunk=hooks, progress=progress,
        )  # fmt: skip

    adaptive: AdaptiveResult | None = None
    if options.adaptive:
        adaptive = integrate_adaptive(
            lambda a, w: run_nodes(a, w, True),
            delta=f_input - f_baseline,
            tolerance=options.tolerance,
            budget=options.step_budget,
            progress=progress,
        )
        alphas, weights, gradients = adaptive.alphas, adaptive.weights, adaptive.gradients
        step_sizes = torch.tensor(weights, dtype=torch.float32).view(-1, 1)
        # The seed's recipe, literally, so it holds exactly on the reply.
        integrated = (gradients * step_sizes[:, :, None]).sum(0) * diff_cpu
        integrand = adaptive.integrand
        chunk_steps, chunks = adaptive.chunk_steps, adaptive.chunks
        if "intermediate_gradients" not in options.fields:
            gradients = None
    else:
        alphas, weights = path_rule(options.method, options.n_steps)
        progress.total = len(alphas)
        path = run_nodes(alphas, weights, "intermediate_gradients" in options.fields)
        integrated = diff_cpu * path.weighted_gradients
        gradients, integrand = path.gradients, path.integrand
        chunk_steps, chunks = path.chunk_steps, path.chunks

    tensors = _tensors(options, integrated, gradients, weights, alphas, baseline, diff_cpu)
    total = float(integrated.sum(dtype=torch.float64))
    delta = f_input - f_baseline
    meta = {
        "model": adapter.name,
        "tokens": encoded.tokens,
        "labels": list(adapter.labels),
        "probabilities": [float(p) for p in probabilities],
        "target": target,
        "target_label": adapter.labels[target],
        "f_input": f_input,
        "f_baseline": f_baseline,
        "attribution_sum": total,
        "completeness_error": abs(total - delta),
        "relative_completeness_error": abs(total - delta) / abs(delta) if delta else None,
        "truncated": encoded.truncated,
        "n_steps": options.n_steps,
        "method": options.method,
        "baseline": options.baseline,
        "seed": options.seed,
        "dtype": dtype,
        "attributions": [float(v) for v in integrated[0].sum(dim=-1, dtype=torch.float64)],
        "alphas": [float(a) for a in alphas],
        "path_integrand": [float(v) for v in integrand],
        "timings": {
            "compute_seconds": time.perf_counter() - started,
            "chunk_steps": chunk_steps,
            "chunks": chunks,
        },
    }
    if adaptive is not None:
        meta.update(_adaptive_meta(adaptive, options))
    return AttributionResult(tensors=tensors, meta=meta)


def _adaptive_meta(adaptive: AdaptiveResult, options: AttributionOptions) -> dict[str, Any]:
    """What the adaptive integration did: paid evaluations, nodes kept, estimates."""
    return {
        "n_steps": adaptive.evaluations,
        "nodes_used": len(adaptive.alphas),
        "method": ADAPTIVE_METHOD,
        "requested_steps": "auto",
        "tolerance": options.tolerance,
        "step_budget": options.step_budget,
        # None rather than inf/NaN: the wire carries strict JSON.
        "error_estimate": _finite_or_none(adaptive.error_estimate),
        "completeness": _finite_or_none(adaptive.completeness),
        "converged": adaptive.converged,
        "rounds": adaptive.rounds,
        "step_sizes": [float(w) for w in adaptive.weights],
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _tensors(
    options: AttributionOptions,
    integrated: torch.Tensor,
    gradients: torch.Tensor | None,
    weights: Any,
    alphas: Any,
    baseline: torch.Tensor,
    diff_cpu: torch.Tensor,
) -> dict[str, torch.Tensor]:
    wanted = set(options.fields)
    out: dict[str, torch.Tensor] = {}
    if "integrated_gradients" in wanted:
        out["integrated_gradients"] = integrated.contiguous()
    if "intermediate_gradients" in wanted and gradients is not None:
        out["intermediate_gradients"] = gradients
    if "step_sizes" in wanted:
        out["step_sizes"] = torch.tensor(weights, dtype=torch.float32).view(-1, 1)
    if "intermediates" in wanted:
        alpha = torch.tensor(alphas, dtype=torch.float32).view(-1, 1, 1)
        out["intermediates"] = (baseline.cpu() + alpha * diff_cpu).contiguous()
    return out


def _chunk_hooks(deadline: float | None, extra: BeforeChunk | None) -> BeforeChunk:
    def before(steps: int) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("the request's deadline passed while computing")
        if extra is not None:
            extra(steps)

    return before

