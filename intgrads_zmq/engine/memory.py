"""Size chunks of path steps to a memory budget.

A step is one path point pushed forward and back through the model; the
activations it keeps for the backward pass grow with tokens x layers x width
(and tokens^2 x heads for attention). The estimate below is deliberately
generous; if a chunk still runs out of memory the engine halves it and
retries, and remembers the lesson for later requests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..sizes import parse_bytes

GIB = 1 << 30
DEFAULT_CPU_BUDGET = 2 * GIB
# On a CPU, bigger chunks stop paying once one layer's activations for the
# chunk pass this many elements: the work spills out of the caches. Measured
# on bert-base (2 cores, AVX-512/AMX): the best float32 chunks were 10 steps
# at 128 tokens and 2 at 512; bf16 ran best at 25 and 4 (about twice the
# float32 size). Expressed in activation elements the optimum is the same at
# both lengths, because attention's tokens-squared term is counted.
CPU_LAYER_ELEMENTS = {"float32": 40_000_000, "bf16": 80_000_000}


def layer_elements_per_step(hints: dict[str, int], tokens: int) -> int:
    """Activation elements one layer keeps for one path point (generous)."""
    per_token = 14 * hints["hidden"] + 3 * hints["intermediate"] + 3 * hints["heads"] * tokens
    return per_token * tokens


def bytes_per_step(hints: dict[str, int], tokens: int, dtype: str) -> int:
    """Generous estimate of the memory one path point needs in flight."""
    element = 4 if dtype == "float32" else 3  # autocast keeps some fp32 copies
    layers = layer_elements_per_step(hints, tokens) * hints["layers"] * element
    return layers + 8 * tokens * hints["hidden"]


@dataclass
class ChunkPlanner:
    """Chooses how many steps run together, within ``budget_bytes``."""

    budget_bytes: int = DEFAULT_CPU_BUDGET
    max_layer_elements: int | None = None  # a speed cap (CPU), not a memory one
    shrink: float = 1.0  # lowered after an out-of-memory retry

    @classmethod
    def for_device(cls, device_type: str, dtype: str, budget_bytes: int | None = None) -> ChunkPlanner:
        """The planner a worker uses: its memory budget, plus the CPU speed cap."""
        return cls(
            budget_bytes=budget_bytes or default_budget(device_type),
            max_layer_elements=CPU_LAYER_ELEMENTS[dtype] if device_type == "cpu" else None,
        )

    def chunk_steps(self, hints: dict[str, int], tokens: int, n_steps: int, dtype: str) -> int:
        per_step = bytes_per_step(hints, tokens, dtype)
        steps = int(self.budget_bytes * self.shrink) // max(per_step, 1)
        if self.max_layer_elements:
            steps = min(steps, self.max_layer_elements // max(layer_elements_per_step(hints, tokens), 1))
        steps = max(1, min(steps, n_steps))
        # Equal chunks: 50 steps in chunks of at most 12 run as 5 x 10, not
        # 4 x 12 + 2 (a small last chunk wastes the GEMMs' efficiency).
        chunks = -(-n_steps // steps)
        return -(-n_steps // chunks)

    def learn_oom(self, failed_steps: int, tokens: int, hints: dict[str, int], dtype: str) -> None:
        """Remember that ``failed_steps`` did not fit, so later plans aim lower."""
        per_step = bytes_per_step(hints, tokens, dtype)
        fitted = max(1, failed_steps // 2) * per_step
        self.shrink = min(self.shrink, fitted / max(self.budget_bytes, 1))


def default_budget(device_type: str) -> int:
    """Budget when none is configured: most of a GPU's free memory, or 2 GiB."""
    env = os.environ.get("INTGRADS_MEMORY_BUDGET")
    if env:
        return parse_bytes(env)
    if device_type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free * 0.6)
    return DEFAULT_CPU_BUDGET
