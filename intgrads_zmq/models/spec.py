"""Which model a worker serves, as plain data (crosses process boundaries).

Torch-free on purpose: the broker and CLI build specs, only workers load them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("demo", "hf", "bert", "xlnet-base", "xlnet-large")
DEMO_NAME = "demo"


@dataclass(frozen=True)
class ModelSpec:
    """A model to load: its kind, files, and the name requests use."""

    kind: str = "demo"
    path: str | None = None
    tokenizer: str | None = None
    name: str = DEMO_NAME

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.kind != "demo" and not self.path:
            raise ValueError(f"a {self.kind} model needs a path")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**{k: data.get(k) for k in ("kind", "path", "tokenizer", "name") if data.get(k) is not None})
