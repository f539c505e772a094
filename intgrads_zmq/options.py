"""Request options: names, defaults, limits and validation.

Pure Python (no torch, no zmq) so the HTTP frontend can reject a bad request
before it reaches the broker, and the worker can check again what a peer sent
(a remote frontend is not trusted blindly). Validation errors are
:class:`~intgrads_zmq.errors.BadRequest` naming the offending field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import BadRequest

METHODS = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)
BASELINES = ("zero", "pad", "unk", "rand-norm", "rand-unif", "period", "mask")
TENSOR_FIELDS = (
    "integrated_gradients",
    "intermediate_gradients",
    "step_sizes",
    "intermediates",
)
OPTION_NAMES = (
    "target", "n_steps", "method", "baseline", "max_length", "seed", "tolerance",
    "contrast", "aggregate", "metrics",
)  # fmt: skip
MAX_SEED = 2**63 - 1
# ``n_steps: "auto"`` integrates adaptively to ``tolerance`` (relative error of
# the per-token attributions). The reply names the rule it used; requests
# never choose it through ``method``.
AUTO_STEPS = "auto"
ADAPTIVE_METHOD = "gausskronrod_adaptive"
DEFAULT_TOLERANCE = 0.01
TOLERANCE_RANGE = (1e-4, 0.5)
# ``target: "all"`` explains every class in one pass over the path (the
# tensors that depend on the class gain a leading class axis). The word is
# reserved: a model with a label called "all" is asked for it by index.
ALL_TARGETS = "all"
# ``aggregate``: per sub-word token (the seed's) or per word of the input text.
AGGREGATES = ("tokens", "words")
# ``metrics``: faithfulness of the attribution, from forward passes only.
METRICS = ("comprehensiveness", "sufficiency", "log_odds")


@dataclass(frozen=True)
class Limits:
    """Server-side bounds that no request may exceed."""

    max_steps: int = 300
    max_length: int = 512
    max_sequence_chars: int = 100_000
    max_sequences: int = 64
    # target "all" costs one backward per class and multiplies the per-class
    # tensors by the class count: refused (by the worker) above this many classes.
    max_target_classes: int = 32

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class AttributionOptions:
    """Fully resolved options for one attribution (defaults filled in)."""

    target: int | str | None = None
    n_steps: int | str = 50  # or AUTO_STEPS
    method: str = "gausslegendre"
    baseline: str = "pad"
    max_length: int = 512
    seed: int = 0
    fields: tuple[str, ...] = field(default=TENSOR_FIELDS)
    tolerance: float = DEFAULT_TOLERANCE  # used only when n_steps is "auto"
    step_budget: int = Limits.max_steps  # most evaluations "auto" may pay; the server's max_steps
    contrast: int | str | None = None  # explain logit[target] - logit[contrast]
    aggregate: str = "tokens"  # or "words"
    metrics: tuple[str, ...] = ()  # faithfulness metrics to compute (a subset of METRICS)

    @property
    def adaptive(self) -> bool:
        return self.n_steps == AUTO_STEPS

    @property
    def every_class(self) -> bool:
        """``target: "all"``: replies carry a leading class axis."""
        return self.target == ALL_TARGETS

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fields"] = list(self.fields)
        data["metrics"] = list(self.metrics)
        del data["step_budget"]  # the server's max_steps, published with the limits
        return data


def _require_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer, got {_describe(value)}", field=name)
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}, got {value}", field=name)
    return value


def _require_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise BadRequest(
            f"'{name}' must be one of {', '.join(choices)}; got {_describe(value)}",
            field=name,
        )
    return value


def _describe(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "a non-finite number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_steps(value: Any, limits: Limits) -> int | str:
    """A step count within the server's limit, or ``"auto"``."""
    if value == AUTO_STEPS:
        return AUTO_STEPS
    if isinstance(value, str):
        raise BadRequest(
            f"'n_steps' must be an integer or \"auto\", got {_describe(value)}", field="n_steps"
        )
    return _require_int("n_steps", value, 1, limits.max_steps)


def validate_tolerance(value: Any) -> float:
    """A relative error target for ``n_steps: "auto"``, within TOLERANCE_RANGE."""
    low, high = TOLERANCE_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'tolerance' must be a number, got {_describe(value)}", field="tolerance")
    if not low <= value <= high:
        raise BadRequest(f"'tolerance' must be between {low:g} and {high:g}, got {value:g}", field="tolerance")
    return float(value)


def check_steps_for_method(n_steps: Any, method: Any) -> None:
    """The one place that knows which step counts a method cannot use."""
    if method == "riemann_trapezoid" and n_steps == 1:
        raise BadRequest("'n_steps' must be at least 2 for riemann_trapezoid", field="n_steps")


def check_auto_method(n_steps: Any, requested: Mapping[str, Any]) -> None:
    """``auto`` places its own Gauss-Kronrod nodes: a fixed-grid method asked for with it is a mistake."""
    method = requested.get("method")
    if n_steps == AUTO_STEPS and method is not None and method != "gausslegendre":
        raise BadRequest(
            f"'method' {method} needs an integer 'n_steps'; n_steps \"auto\" chooses its own "
            "Gauss-Kronrod nodes (leave 'method' out or use gausslegendre)",
            field="method",
        )


def validate_target(value: Any, name: str = "target") -> int | str | None:
    """A class index (int >= 0), a label name (non-empty str), ``"all"`` (for
    ``target`` only) or None. Whether the class exists is the worker's call:
    only it knows the model's labels."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value or len(value) > 200:
            raise BadRequest(f"'{name}' label name must be 1 to 200 characters", field=name)
        if value == ALL_TARGETS and name != "target":
            raise BadRequest(f"'{name}' must be one class (an index or a label), not \"all\"", field=name)
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"'{name}' must be a class index, a label name" + (' or "all"' if name == "target" else "")
            + f", got {_describe(value)}",
            field=name,
        )
    return _require_int(name, value, 0, 1_000_000)


def validate_metrics(value: Any) -> tuple[str, ...]:
    """Faithfulness metrics: a list of distinct names from METRICS (may be empty;
    a tuple is what validation itself returns, so it passes a second check)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadRequest(
            f"'metrics' must be a list of names from {', '.join(METRICS)}; got {_describe(value)}",
            field="metrics",
        )
    unknown = [v for v in value if v not in METRICS]
    if unknown:
        raise BadRequest(
            f"'metrics' has unknown names {unknown}; choose from {', '.join(METRICS)}", field="metrics"
        )
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise BadRequest(f"'metrics' names {', '.join(repeated)} more than once", field="metrics")
    return tuple(value)


def check_contrast(target: Any, contrast: Any) -> None:
    """What can be refused without the model's labels: a contrast with "all",
    and a contrast spelled exactly like the target (the worker checks again
    once both are class indices)."""
    if contrast is None:
        return
    if target == ALL_TARGETS:
        raise BadRequest(
            "'contrast' cannot be combined with target \"all\"; ask for one target class", field="contrast"
        )
    if target is not None and type(target) is type(contrast) and _same_class_name(target, contrast):
        raise BadRequest(
            f"'contrast' {contrast!r} is the target itself: logit[target] - logit[contrast] would be 0",
            field="contrast",
        )


def _same_class_name(a: int | str, b: int | str) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return a == b


def validate_options(raw: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """Check the options a client set; return only those, validated.

    Unset options are left out so that the serving worker can apply its own
    defaults (``--baseline`` and friends are per-worker settings).
    """
    out: dict[str, Any] = {}
    if "target" in raw:
        out["target"] = validate_target(raw["target"])
    if "n_steps" in raw:
        out["n_steps"] = validate_steps(raw["n_steps"], limits)
    if "tolerance" in raw:
        out["tolerance"] = validate_tolerance(raw["tolerance"])
    if "method" in raw:
        out["method"] = _require_choice("method", raw["method"], METHODS)
    if "baseline" in raw:
        out["baseline"] = _require_choice("baseline", raw["baseline"], BASELINES)
    if "max_length" in raw:
        out["max_length"] = _require_int("max_length", raw["max_length"], 2, limits.max_length)
    if "seed" in raw:
        out["seed"] = _require_int("seed", raw["seed"], 0, MAX_SEED)
    if "fields" in raw:
        out["fields"] = validate_fields(raw["fields"])
    if "contrast" in raw:
        out["contrast"] = validate_target(raw["contrast"], "contrast")
    if "aggregate" in raw:
        out["aggregate"] = _require_choice("aggregate", raw["aggregate"], AGGREGATES)
    if "metrics" in raw:
        out["metrics"] = validate_metrics(raw["metrics"])
    check_steps_for_method(out.get("n_steps"), out.get("method"))
    check_auto_method(out.get("n_steps"), out)
    check_contrast(out.get("target"), out.get("contrast"))
    return out


def validate_fields(value: Any) -> tuple[str, ...]:
    """Which of the four big tensors to return (a list; may be empty)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("'fields' must be a list of tensor names", field="fields")
    unknown = [v for v in value if v not in TENSOR_FIELDS]
    if unknown:
        raise BadRequest(
            f"'fields' has unknown names {unknown}; choose from {', '.join(TENSOR_FIELDS)}",
            field="fields",
        )
    return tuple(name for name in TENSOR_FIELDS if name in value)


def resolve_options(
    provided: Mapping[str, Any], defaults: AttributionOptions, limits: Limits
) -> AttributionOptions:
    """Validate what a peer sent and fill the gaps from the worker's defaults."""
    checked = validate_options(provided, limits)
    unknown = set(provided) - set(OPTION_NAMES) - {"fields"}
    if unknown:
        name = sorted(unknown)[0]
        raise BadRequest(f"unknown option '{name}'", field=name)
    options = replace(defaults, **checked)
    check_steps_for_method(options.n_steps, options.method)
    check_auto_method(options.n_steps, checked)
    check_contrast(options.target, options.contrast)
    if options.step_budget != limits.max_steps:
        options = replace(options, step_budget=limits.max_steps)
    if options.max_length > limits.max_length:
        options = replace(options, max_length=limits.max_length)
    return options


@dataclass(frozen=True)
class ParsedRequest:
    """A validated HTTP body: the texts plus the options the client set."""

    sequences: tuple[str, ...]
    options: dict[str, Any]
    batch: bool  # the client sent "sequences" (a list) rather than "sequence"


REQUEST_KEYS = frozenset({"sequence", "sequences", *OPTION_NAMES, "fields"})


def parse_request(body: Any, limits: Limits) -> ParsedRequest:
    """Validate a decoded JSON body of ``POST /model/``."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with a 'sequence'", field="sequence")
    unknown = sorted(set(body) - REQUEST_KEYS)
    if unknown:
        raise BadRequest(
            f"unknown field '{unknown[0]}'; allowed: {', '.join(sorted(REQUEST_KEYS))}",
            field=unknown[0],
        )
    if "sequence" in body and "sequences" in body:
        raise BadRequest("send either 'sequence' or 'sequences', not both", field="sequences")
    if "sequences" in body:
        texts = body["sequences"]
        if not isinstance(texts, list) or not texts:
            raise BadRequest("'sequences' must be a non-empty list of strings", field="sequences")
        if len(texts) > limits.max_sequences:
            raise BadRequest(
                f"'sequences' may hold at most {limits.max_sequences} texts", field="sequences"
            )
        sequences = tuple(_check_text("sequences", t, limits) for t in texts)
        batch = True
    elif "sequence" in body:
        sequences = (_check_text("sequence", body["sequence"], limits),)
        batch = False
    else:
        raise BadRequest("missing 'sequence': the text to explain", field="sequence")
    options = validate_options({k: v for k, v in body.items() if k in OPTION_NAMES or k == "fields"}, limits)
    return ParsedRequest(sequences=sequences, options=options, batch=batch)


def check_sequence(text: Any, limits: Limits) -> str:
    """The one text a worker is asked to explain, checked against its own limits
    (length first, so an oversized text costs no tokenising), whatever the
    frontend that sent it checked."""
    return _check_text("sequence", text, limits)


def _check_text(name: str, text: Any, limits: Limits) -> str:
    if not isinstance(text, str):
        raise BadRequest(f"'{name}' must be a string, got {_describe(text)}", field=name)
    if len(text) > limits.max_sequence_chars:  # first: the cheapest refusal of a huge text
        raise BadRequest(
            f"'{name}' is longer than {limits.max_sequence_chars} characters", field=name
        )
    if not text.strip():
        raise BadRequest(f"'{name}' is empty", field=name)
    if "\x00" in text:
        raise BadRequest(f"'{name}' contains a NUL character", field=name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"'{name}' is not valid Unicode (lone surrogate)", field=name) from None
    return text
