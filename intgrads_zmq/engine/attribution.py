"""From a text and options to integrated and intermediate gradients.

:func:`attribute` is the public entry point: tokenise, build x and x', score
both, pick what is explained (a target, a contrast, or every class: see
:mod:`.objective`), run the path once, and assemble the four seed outputs
plus what a reader needs to trust them (tokens, probabilities, F(x), F(x'),
the completeness error), then the optional word aggregation and
faithfulness metrics. Results are CPU float32 tensors and plain data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import BadRequest, DeadlineExceeded
from ..models.base import ClassifierAdapter
from ..options import ADAPTIVE_METHOD, AttributionOptions
from .adaptive import AdaptiveResult, integrate_adaptive
from .baselines import make_baseline
from .extras import faithfulness_summary, word_summary
from .memory import ChunkPlanner
from .objective import Objective, resolve_objective, resolve_target
from .path import BeforeChunk, PathProgress, integrate_path, precision_context
from .rules import path_rule

__all__ = ["AttributionResult", "attribute", "resolve_target"]


@dataclass
class AttributionResult:
    """The tensors asked for (CPU, float32, contiguous) and JSON-able metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


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
    max_kept_token_steps: int | None = None,
) -> AttributionResult:
    """Compute every output for ``text`` in one pass over the path.

    With ``n_steps: "auto"`` the pass runs in rounds (see :mod:`.adaptive`);
    ``progress`` (optional) is updated with steps done and planned before
    each chunk's hook call.

    Shapes (T tokens, H hidden, n steps, C classes). One target, with or
    without a contrast: ``integrated_gradients`` (1, T, H),
    ``intermediate_gradients`` (n, T, H), and in the metadata floats for
    ``f_input``, ``f_baseline``, ``attribution_sum``, ``completeness_error``,
    ``relative_completeness_error``, a list of T for ``attributions`` and of n
    for ``path_integrand`` (the seed's shapes). ``target: "all"``: the tensors
    that depend on the class gain a leading class axis,
    ``integrated_gradients`` (C, 1, T, H) and ``intermediate_gradients``
    (C, n, T, H), and each of those metadata values becomes a list of C in
    class order (``target`` and ``target_label`` too: every class index and
    label). ``step_sizes`` (n, 1) and ``intermediates`` (n, T, H) are the
    path's and stay shared. With a contrast c, F = logit[target] - logit[c]:
    ``f_input`` and ``f_baseline`` are that difference, and completeness holds
    for it.

    ``max_kept_token_steps`` (a worker passes its ``max_steps`` x
    ``max_length``: the largest ``intermediate_gradients`` of one target)
    bounds the per-node gradients that ``target: "all"`` keeps for every
    class, counted as classes x steps x tokens: a request past it is refused
    before the path runs, naming ``fields``.
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
    predicted = int(probabilities.argmax())
    objective = resolve_objective(options.target, options.contrast, adapter.labels, predicted)
    readout = objective.readout(ends.shape[-1], ends.device)
    f_values = (ends.double() @ readout.double().T).cpu()  # (2, K): F(x) and F(x') of each function
    f_input, f_baseline = f_values[0].tolist(), f_values[1].tolist()
    deltas = [a - b for a, b in zip(f_input, f_baseline, strict=True)]
    diff_cpu = (layer_input - baseline).cpu()

    keep = "intermediate_gradients" in options.fields
    _check_kept_size(objective, options, keep, encoded.length, layer_input.shape[-1], max_kept_token_steps)

    def run_nodes(alphas: Any, weights: Any, groups: Any = None) -> Any:
        return integrate_path(
            adapter, encoded, layer_input, baseline, alphas, weights, readout,
            planner=planner, dtype=dtype, keep_gradients=keep, before_chunk=hooks, progress=progress,
            groups=groups,
        )  # fmt: skip

    adaptive: AdaptiveResult | None = None
    if options.adaptive:
        adaptive = integrate_adaptive(
            run_nodes,
            delta=np.array(deltas),
            tolerance=options.tolerance,
            budget=options.step_budget,
            progress=progress,
        )
        alphas, weights, gradients = adaptive.alphas, adaptive.weights, adaptive.gradients
        if gradients is not None:
            step_sizes = torch.tensor(weights, dtype=torch.float32).view(-1, 1)
            # The seed's recipe, literally, so it holds exactly on the reply (class by class).
            integrated = torch.stack(
                [(gradients[k] * step_sizes[:, :, None]).sum(0) * diff_cpu for k in range(objective.rows)]
            )
        else:  # no per-node gradients kept: the sub-intervals' weighted sums
            integrated = diff_cpu * adaptive.weighted
        integrand = adaptive.integrand
        chunk_steps, chunks = adaptive.chunk_steps, adaptive.chunks
    else:
        alphas, weights = path_rule(options.method, options.n_steps)
        progress.total = len(alphas)
        path = run_nodes(alphas, weights)
        integrated = diff_cpu * path.weighted_gradients  # (K, 1, T, H)
        gradients, integrand = path.gradients, path.integrand
        chunk_steps, chunks = path.chunk_steps, path.chunks

    # (K, T) per-token attributions, float64: the summary, words and metrics all read these.
    token_scores = integrated[:, 0].sum(dim=-1, dtype=torch.float64)
    totals = [float(v) for v in integrated.sum(dim=(1, 2, 3), dtype=torch.float64)]
    if not objective.every_class:  # the seed's shapes: drop the row axis
        integrated = integrated[0]
        gradients = gradients[0] if gradients is not None else None
    tensors = _tensors(options, integrated, gradients, weights, alphas, baseline, diff_cpu)
    errors = [abs(total - delta) for total, delta in zip(totals, deltas, strict=True)]
    per_class = _per_class_shaper(objective.every_class)
    meta = {
        "model": adapter.name,
        "tokens": encoded.tokens,
        "labels": list(adapter.labels),
        "probabilities": [float(p) for p in probabilities],
        "predicted": predicted,
        "predicted_label": adapter.labels[predicted],
        "target": per_class(list(objective.targets)),
        "target_label": per_class([adapter.labels[t] for t in objective.targets]),
        "f_input": per_class(f_input),
        "f_baseline": per_class(f_baseline),
        "attribution_sum": per_class(totals),
        "completeness_error": per_class(errors),
        "relative_completeness_error": per_class(
            [error / abs(delta) if delta else None for error, delta in zip(errors, deltas, strict=True)]
        ),
        "truncated": encoded.truncated,
        "n_steps": options.n_steps,
        "method": options.method,
        "baseline": options.baseline,
        "seed": options.seed,
        "dtype": dtype,
        "aggregate": options.aggregate,
        "attributions": per_class(token_scores.tolist()),
        "alphas": [float(a) for a in alphas],
        "path_integrand": per_class([[float(v) for v in row] for row in integrand]),
        "timings": {
            "compute_seconds": 0.0,  # set below, once everything is computed
            "chunk_steps": chunk_steps,
            "chunks": chunks,
        },
    }
    if objective.contrast is not None:
        meta["contrast"] = objective.contrast
        meta["contrast_label"] = adapter.labels[objective.contrast]
    if adaptive is not None:
        meta.update(_adaptive_meta(adaptive, options, per_class))
    if options.aggregate == "words":
        meta.update(word_summary(adapter, text, encoded, token_scores if objective.every_class else token_scores[0]))
    if options.metrics:
        meta["metrics"], meta["timings"]["metrics_seconds"] = faithfulness_summary(
            adapter, encoded, token_scores, objective, options.metrics, dtype=dtype, planner=planner
        )
    meta["timings"]["compute_seconds"] = time.perf_counter() - started
    return AttributionResult(tensors=tensors, meta=meta)


def _check_kept_size(objective: Objective, options: AttributionOptions, keep: bool, tokens: int,
                     hidden: int, limit: int | None) -> None:
    """Refuse "all" when the per-node gradients kept for every class would pass
    ``limit`` token-steps (one target never is: its size is what the server's
    step and length limits allow). ``n_steps: "auto"`` counts its step budget:
    how many nodes it ends with is known only at the end."""
    if limit is None or objective.rows == 1 or not keep:
        return
    steps = options.step_budget if options.adaptive else int(options.n_steps)
    kept = objective.rows * steps * tokens
    if kept > limit:
        mib = 4 * hidden / 2**20
        raise BadRequest(
            f"target \"all\" with intermediate_gradients would keep {objective.rows} classes x {steps} "
            f"steps x {tokens} tokens of gradients ({kept * mib:.0f} MiB), more than one target may at this "
            f"server's limits ({limit * mib:.0f} MiB): leave intermediate_gradients out of 'fields' "
            "(the JSON format's default), or ask for fewer steps",
            field="fields",
        )


def _per_class_shaper(every_class: bool) -> Callable[[list[Any]], Any]:
    """A row-per-function list as the reply carries it: the list itself for
    ``target: "all"``, its one element otherwise (the seed's scalar shapes)."""
    if every_class:
        return lambda values: values
    return lambda values: values[0]


def _adaptive_meta(
    adaptive: AdaptiveResult, options: AttributionOptions, per_class: Callable[[list[Any]], Any]
) -> dict[str, Any]:
    """What the adaptive integration did: paid evaluations, nodes kept, estimates
    (one per class for ``target: "all"``; ``converged`` means every class did)."""
    return {
        "n_steps": adaptive.evaluations,
        "nodes_used": len(adaptive.alphas),
        "method": ADAPTIVE_METHOD,
        "requested_steps": "auto",
        "tolerance": options.tolerance,
        "step_budget": options.step_budget,
        # None rather than inf/NaN: the wire carries strict JSON.
        "error_estimate": per_class([_finite_or_none(float(v)) for v in adaptive.error_estimates]),
        "completeness": per_class([_finite_or_none(float(v)) for v in adaptive.completenesses]),
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

