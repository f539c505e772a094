"""What every request of a run sends: the options from the command line.

Options pass through as plain JSON keys of ``POST /model/``: the server is
the one authority on what they mean and allows, so the runner only parses
their shapes (a number, a label, a list) and leaves the rest to the server's
400s. Options a server does not know yet (``contrast``, ``aggregate``,
``metrics``, ``target: "all"``) are sent the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..options import TENSOR_FIELDS

METRICS = ("comprehensiveness", "sufficiency", "log_odds")
AGGREGATES = ("tokens", "words")


class OptionError(ValueError):
    """A command-line option that cannot be sent as given."""


@dataclass(frozen=True)
class RequestSpec:
    """The options sent with each example, and the tensors the run keeps."""

    options: dict[str, Any] = field(default_factory=dict)
    fields: tuple[str, ...] = ()
    model: str | None = None

    @property
    def format(self) -> str:
        """JSON for summaries; safetensors when tensors are kept (raw bytes, no lists of floats)."""
        return "safetensors" if self.fields else "json"

    def body(self, text: str) -> dict[str, Any]:
        return {"sequence": text, **self.options, "fields": list(self.fields)}

    def to_dict(self) -> dict[str, Any]:
        """What the output folder's manifest records (a resumed run must match it)."""
        return {"options": dict(self.options), "fields": list(self.fields), "model": self.model}


def class_ref(value: str, name: str) -> int | str:
    """A class by index (digits) or by label name."""
    value = value.strip()
    if not value:
        raise OptionError(f"--{name} is empty")
    return int(value) if value.isdigit() else value


def split_list(value: str | None) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def build_request(*, target: str | None = None, contrast: str | None = None,
                  aggregate: str | None = None, metrics: str | None = None,
                  n_steps: str | None = None, tolerance: float | None = None,
                  baseline: str | None = None, method: str | None = None,
                  max_length: int | None = None, seed: int | None = None,
                  fields: str | None = None, model: str | None = None) -> RequestSpec:
    """Options given on the command line, shaped as the JSON the server reads.

    Unset options are not sent, so the server's defaults apply.
    """
    options: dict[str, Any] = {}
    if target is not None:
        options["target"] = "all" if target.strip().lower() == "all" else class_ref(target, "target")
    if contrast is not None:
        options["contrast"] = class_ref(contrast, "contrast")
    if aggregate is not None:
        if aggregate not in AGGREGATES:
            raise OptionError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        options["aggregate"] = aggregate
    if metrics is not None:
        names = split_list(metrics)
        unknown = [m for m in names if m not in METRICS]
        if not names or unknown:
            raise OptionError(f"--metrics takes a comma-separated list of {', '.join(METRICS)}; "
                              f"got {metrics!r}")
        options["metrics"] = names
    if n_steps is not None:
        options["n_steps"] = _steps(n_steps)
    given = {"tolerance": tolerance, "baseline": baseline, "method": method,
             "max_length": max_length, "seed": seed}
    options.update({k: v for k, v in given.items() if v is not None})
    wanted = tuple(split_list(fields))
    unknown = [f for f in wanted if f not in TENSOR_FIELDS]
    if unknown:
        raise OptionError(f"--fields takes a comma-separated list of {', '.join(TENSOR_FIELDS)}; "
                          f"unknown: {', '.join(unknown)}")
    return RequestSpec(options=options, fields=tuple(dict.fromkeys(wanted)), model=model)


def _steps(value: str) -> int | str:
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    try:
        steps = int(text)
    except ValueError:
        raise OptionError(f"--n-steps must be a positive integer or 'auto', got {value!r}") from None
    if steps < 1:
        raise OptionError(f"--n-steps must be a positive integer or 'auto', got {value!r}")
    return steps
