"""What the serving flags say, as one typed object.

The CLI parses flags into :class:`ServeSettings`; process assembly plans
workers from it and the workers take their request defaults and limits from
it. Torch-free: the broker process builds it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServeSettings:
    """Devices, request defaults and limits for the workers of one model."""

    cuda: bool | None = None  # None: GPUs when any is visible
    num_cuda_devs: int = 1
    workers: int | None = None  # None: 1 on CPU, every GPU group on GPUs
    baseline: str = "pad"
    method: str = "gausslegendre"
    n_steps: int | str = 50
    max_steps: int = 300
    max_length: int = 512
    max_target_classes: int = 32
    dtype: str = "float32"
    memory_budget: int | None = None  # bytes

    def check(self) -> None:
        """Refuse settings that contradict each other (ValueError)."""
        if isinstance(self.n_steps, int) and self.n_steps > self.max_steps:
            raise ValueError("--n-steps exceeds --max-steps")

    def request_defaults(self) -> dict[str, Any]:
        """Options a request gets when it sets none (see AttributionOptions)."""
        return {"baseline": self.baseline, "method": self.method, "n_steps": self.n_steps,
                "max_length": self.max_length}

    def request_limits(self) -> dict[str, Any]:
        """Bounds no request may exceed (see Limits)."""
        return {"max_steps": self.max_steps, "max_length": self.max_length,
                "max_target_classes": self.max_target_classes}
