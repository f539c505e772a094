"""What a reply may add once the path is integrated: word scores and faithfulness.

Both are computed elsewhere, by modules with one job each:
``intgrads_zmq.models.words.aggregate_words`` merges sub-word pieces into the
words of the text (it needs the tokenizer's offsets), and
``intgrads_zmq.engine.faithfulness.faithfulness`` scores an attribution with
forward passes only. This module is the plumbing between them and
:func:`.attribution.attribute`: it hands them the per-token attributions in
the shapes they take and shapes their answers for the reply. A build that
lacks one of them refuses the option with a 400 naming it, rather than
answering without what was asked for.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import torch

from ..errors import BadRequest
from ..models.base import ClassifierAdapter, EncodedText
from .memory import ChunkPlanner
from .objective import Objective

WORD_KEYS = ("words", "word_attributions", "word_spans")
WORDS_MODULE = "intgrads_zmq.models.words"
FAITHFULNESS_MODULE = "intgrads_zmq.engine.faithfulness"


def _function(module: str, name: str, option: str) -> Any:
    """``module.name``, or a 400 naming ``option`` when this build has no such module."""
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # a missing dependency inside it is a real failure
            raise
        raise BadRequest(f"'{option}' is not available on this server (no {module})", field=option) from None


def word_summary(
    adapter: ClassifierAdapter, text: str, encoded: EncodedText, scores: torch.Tensor
) -> dict[str, Any]:
    """``words``, ``word_attributions`` and ``word_spans`` for the reply.

    ``scores`` is float ``(T,)`` for one target, ``(C, T)`` for ``target:
    "all"``; ``word_attributions`` follows: a list of floats, or one list per
    class. Special tokens stay entries of their own with a null span.
    """
    aggregate_words = _function(WORDS_MODULE, "aggregate_words", "aggregate")
    merged = aggregate_words(adapter, text, encoded, scores)
    return {key: merged[key] for key in WORD_KEYS}


def faithfulness_summary(
    adapter: ClassifierAdapter,
    encoded: EncodedText,
    token_scores: torch.Tensor,
    objective: Objective,
    metrics: tuple[str, ...],
    *,
    dtype: str,
    planner: ChunkPlanner,
) -> tuple[Any, float]:
    """The metrics asked for and the seconds they took.

    ``token_scores`` is ``(K, T)``, one row per explained function. Each row
    is scored for its own function (for ``target: "all"`` every class in class
    order, each with its own top tokens removed: a reply lists one result per
    class); with one target the reply holds that one result.
    """
    faithfulness = _function(FAITHFULNESS_MODULE, "faithfulness", "metrics")
    results, seconds = [], 0.0
    for row, target in enumerate(objective.targets):
        started = time.perf_counter()
        result = faithfulness(
            adapter, encoded, token_scores[row], target, objective.contrast, list(metrics),
            dtype=dtype, planner=planner,
        )  # fmt: skip
        # The time goes to timings.metrics_seconds only: the same request must
        # give the same reply bytes (the torch format carries no timings).
        took = result.pop("seconds", None) if isinstance(result, dict) else None
        seconds += float(took) if isinstance(took, (int, float)) else time.perf_counter() - started
        results.append(result)
    return (results if objective.every_class else results[0]), seconds
