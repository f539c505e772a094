"""What a request explains: one logit, the difference of two, or every class.

Integrated gradients explain one scalar function F of the attributed layer's
output. Every F a request can ask for is linear in the logits,
F_k = sum_j R[k, j] logit_j, so one readout matrix R (K rows, one column per
class) describes all three cases:

* a target t: one row, e_t (the seed's behaviour);
* a target t with a contrast c: one row, e_t - e_c ("why t rather than c");
  completeness then holds for logit_t - logit_c;
* ``target: "all"``: the identity, one row per class in class order.

The forward passes along the path do not depend on R; only the backward of
each row does. That is why "all" runs the path once and pays one backward
per class instead of C whole passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BadRequest
from ..options import ALL_TARGETS


@dataclass(frozen=True)
class Objective:
    """The rows of F: their target classes, the contrast class, and whether the
    reply carries a class axis (``target: "all"``)."""

    targets: tuple[int, ...]
    contrast: int | None = None
    every_class: bool = False

    @property
    def rows(self) -> int:
        return len(self.targets)

    def readout(self, classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """R, float32 ``(rows, classes)``: entries 1, -1 (the contrast) and 0, so
        ``logits @ R.T`` is exact (a product by 1 or 0 rounds nothing)."""
        matrix = torch.zeros((self.rows, classes), dtype=torch.float32, device=device)
        for row, target in enumerate(self.targets):
            matrix[row, target] = 1.0
            if self.contrast is not None:
                matrix[row, self.contrast] = -1.0
        return matrix


def resolve_class(value: int | str, labels: list[str], field: str) -> int:
    """A class index from an index or a label name (case-insensitive), or a 400
    naming ``field`` with the model's labels."""
    if isinstance(value, int):
        if not 0 <= value < len(labels):
            raise BadRequest(
                f"'{field}' {value} is out of range: the model has {len(labels)} classes "
                f"({', '.join(labels)})",
                field=field,
            )
        return value
    if value in labels:
        return labels.index(value)
    lowered = [label.lower() for label in labels]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    also = ' or "all"' if field == "target" else ""
    raise BadRequest(
        f"'{field}' {value!r} is not a label of this model; labels: {', '.join(labels)}{also}",
        field=field,
    )


def resolve_target(target: int | str | None, labels: list[str], predicted: int) -> int:
    """Class index from an index, a label name, or None (the prediction)."""
    if target is None:
        return predicted
    return resolve_class(target, labels, "target")


def resolve_objective(
    target: int | str | None, contrast: int | str | None, labels: list[str], predicted: int
) -> Objective:
    """The objective of a request, once the prediction is known."""
    if target == ALL_TARGETS:
        if contrast is not None:
            raise BadRequest("'contrast' cannot be combined with target \"all\"", field="contrast")
        return Objective(tuple(range(len(labels))), None, every_class=True)
    index = resolve_target(target, labels, predicted)
    if contrast is None:
        return Objective((index,))
    other = resolve_class(contrast, labels, "contrast")
    if other == index:
        raise BadRequest(
            f"'contrast' is the target class itself ({labels[index]}): "
            "logit[target] - logit[contrast] would be 0",
            field="contrast",
        )
    return Objective((index,), other)
