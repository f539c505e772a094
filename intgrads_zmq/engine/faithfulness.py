"""How faithful an attribution is: does removing the tokens it ranks highest
change the model's answer, and do those tokens alone keep it?

Forward passes only (no gradients). Every perturbed input is built first,
identical ones are run once, and all of them go through the model in as few
batches as the memory planner allows.

Definitions (``n`` = the tokens the tokenizer did not add; tokens ranked by
their attribution, highest first, ties by position; the top ``f`` of them
are the first ``ceil(f * n)``; a removed token is replaced by the model's
mask token, or its pad token when it has none, keeping its position, token
type and attention mask; added tokens such as ``[CLS]`` are never removed):

* the measured quantity ``m`` is the probability of the target class,
  ``p_t``; with a contrast class ``c`` it is ``p_t - p_c`` (a probability
  difference, bounded like ``p_t``, that grows and shrinks with the explained
  function ``logit_t - logit_c``);
* ``comprehensiveness`` (ERASER, as AOPC): the mean over f = 10 %, 20 %, …,
  100 % of ``m(x) - m(x without its top f)``. Higher is better: the tokens
  ranked high were needed;
* ``sufficiency`` (ERASER, as AOPC): the mean over the same f of
  ``m(x) - m(only the top f of x)``. Lower is better: those tokens alone keep
  the answer (at 100 % the input is x itself, so that term is 0);
* ``log_odds`` (as in the DIG paper, for one input): ``log p_t(x without its
  top 20 %) - log p_t(x)``; with a contrast, the change of ``log(p_t / p_c)``,
  which is exactly the change of the explained function
  ``logit_t - logit_c``. More negative is better.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import BadRequest, OutOfMemory
from ..models.base import ClassifierAdapter, EncodedText
from .memory import ChunkPlanner
from .path import is_out_of_memory, precision_context

METRICS = ("comprehensiveness", "sufficiency", "log_odds")
TENTHS = tuple(range(1, 11))  # the fractions 10 %, 20 %, ..., 100 %, as whole tenths
LOG_ODDS_TENTHS = 2  # the DIG paper masks the top 20 %


def top_count(tenths: int, ranked: int) -> int:
    """How many tokens ``tenths``/10 of ``ranked`` tokens is: ceil, in integers
    (``0.3 * 10`` in floats is 3.0000000000000004, whose ceil is 4)."""
    return -(-tenths * ranked // 10)


def replacement_token(adapter: ClassifierAdapter) -> tuple[int, str]:
    """The id and text of the token that stands for a removed one: the mask
    token, else the pad token (a token the vocabulary really has)."""
    tok = adapter.tokenizer
    for name in ("mask", "pad"):
        text = getattr(tok, f"{name}_token", None)
        token_id = getattr(tok, f"{name}_token_id", None)
        if text is not None and token_id is not None and tok.convert_ids_to_tokens(token_id) == str(text):
            return int(token_id), str(text)
    raise BadRequest(
        f"model '{adapter.name}' has neither a mask nor a pad token to remove tokens with",
        field="metrics",
    )


def ranked_positions(adapter: ClassifierAdapter, encoded: EncodedText, scores: torch.Tensor) -> list[int]:
    """Positions of the tokens that may be removed, highest attribution first."""
    if encoded.special is not None:
        special = encoded.special
    else:
        added = set(getattr(adapter.tokenizer, "all_special_ids", []))
        special = [i in added for i in encoded.input_ids[0].tolist()]
    values = scores.detach().to("cpu", torch.float64).tolist()
    return sorted((i for i in range(encoded.length) if not special[i]), key=lambda i: (-values[i], i))


def faithfulness(
    adapter: ClassifierAdapter,
    encoded: EncodedText,
    token_scores: torch.Tensor,
    target: int,
    contrast: int | None,
    metrics: Sequence[str],
    *,
    dtype: str = "float32",
    planner: ChunkPlanner | None = None,
) -> dict[str, Any]:
    """Score ``token_scores`` (T,), the attribution of ``target`` (of
    ``logit[target] - logit[contrast]`` when ``contrast`` is given), with the
    ``metrics`` asked for (a subset of :data:`METRICS`); see the module's
    docstring for the definitions. Returns the metric values, the curves of the
    asked ERASER metrics, the replacement token, and the cost."""
    started = time.perf_counter()
    wanted = [m for m in METRICS if m in metrics]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not wanted:
        raise BadRequest(
            f"'metrics' must name some of {', '.join(METRICS)}; got {', '.join(unknown) or 'none'}",
            field="metrics",
        )
    if token_scores.shape != (encoded.length,):
        raise ValueError(f"token_scores has shape {tuple(token_scores.shape)}; expected ({encoded.length},)")
    replacement_id, replacement = replacement_token(adapter)
    ranked = ranked_positions(adapter, encoded, token_scores)
    n = len(ranked)

    inputs = _Inputs()
    full = inputs.add(())
    curve_tenths = TENTHS if {"comprehensiveness", "sufficiency"} & set(wanted) else ()
    removed_rows = {
        t: inputs.add(ranked[: top_count(t, n)]) for t in curve_tenths if "comprehensiveness" in wanted
    }
    kept_rows = {t: inputs.add(ranked[top_count(t, n) :]) for t in curve_tenths if "sufficiency" in wanted}
    if "log_odds" in wanted:
        log_odds_row = inputs.add(ranked[: top_count(LOG_ODDS_TENTHS, n)])

    log_probs, batches = _log_probabilities(
        adapter, encoded, inputs.rows, replacement_id, dtype=dtype, planner=planner
    )
    measure = log_probs[:, target].exp()
    log_ratio = log_probs[:, target]
    if contrast is not None:
        measure = measure - log_probs[:, contrast].exp()
        log_ratio = log_ratio - log_probs[:, contrast]
    values = measure.tolist()

    result: dict[str, Any] = {}
    curve: dict[str, Any] = {}
    if curve_tenths:
        curve["fractions"] = [t / 10 for t in curve_tenths]
        curve["removed_tokens"] = [top_count(t, n) for t in curve_tenths]
    for name, rows, key in (("comprehensiveness", removed_rows, "removed"), ("sufficiency", kept_rows, "kept")):
        if name in wanted:
            drops = [values[full] - values[rows[t]] for t in curve_tenths]
            result[name] = math.fsum(drops) / len(drops)
            curve[name] = drops
            curve[key] = [values[rows[t]] for t in curve_tenths]
    if "log_odds" in wanted:
        result["log_odds"] = float(log_ratio[log_odds_row] - log_ratio[full])
        result["log_odds_removed_tokens"] = top_count(LOG_ODDS_TENTHS, n)
    if curve:
        result["curve"] = curve
    result.update(
        {
            "measure": "probability" if contrast is None else "probability_difference",
            "full": values[full],
            "target": target,
            "contrast": contrast,
            "ranked_tokens": n,
            "replacement": replacement,
            "replacement_id": replacement_id,
            "forward_passes": len(inputs.rows),
            "batches": batches,
            "seconds": time.perf_counter() - started,
        }
    )
    return result


class _Inputs:
    """The distinct sets of removed positions, each run once."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []
        self._index: dict[tuple[int, ...], int] = {}

    def add(self, removed: Sequence[int]) -> int:
        key = tuple(sorted(removed))
        if key not in self._index:
            self._index[key] = len(self.rows)
            self.rows.append(key)
        return self._index[key]


def _log_probabilities(
    adapter: ClassifierAdapter,
    encoded: EncodedText,
    rows: list[tuple[int, ...]],
    replacement_id: int,
    *,
    dtype: str,
    planner: ChunkPlanner | None,
) -> tuple[torch.Tensor, int]:
    """log softmax of the logits (float64, CPU) for each row's perturbed input,
    in memory-bounded batches; a batch that runs out of memory is halved."""
    device = encoded.input_ids.device
    planner = planner or ChunkPlanner.for_device(device.type, dtype)
    precision = precision_context(dtype, device)
    tokens = encoded.length
    # The layer output of each perturbed input, built through the adapter as the
    # token-id baselines are (the input's positions and token types kept).
    points = []
    for removed in rows:
        ids = encoded.input_ids.clone()
        if removed:
            ids[0, list(removed)] = replacement_id
        points.append(adapter.layer_output(ids, encoded).float())
    hints = adapter.size_hints()
    chunk = planner.chunk_steps(hints, tokens, len(rows), dtype)
    out: list[torch.Tensor] = []
    start, batches = 0, 0
    while start < len(rows):
        stop = min(len(rows), start + chunk)
        try:
            with torch.no_grad(), precision():
                logits = adapter.logits_from_layer(torch.cat(points[start:stop]), encoded)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if chunk == 1:
                raise OutOfMemory(f"one forward pass of a {tokens}-token input does not fit in memory") from exc
            planner.learn_oom(chunk, tokens, hints, dtype)
            chunk = max(1, chunk // 2)
            continue
        out.append(torch.log_softmax(logits.detach().to("cpu", torch.float64), dim=-1))
        start, batches = stop, batches + 1
    return torch.cat(out), batches
