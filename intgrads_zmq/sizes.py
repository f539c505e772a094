"""Byte sizes written the way people write them ('2GiB', '512MiB').

Torch-free on purpose: the CLI parses ``--memory-budget`` in the broker
process, which must never import torch.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """Parse '2GiB', '512MiB', '1.5G' or a plain byte count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB]?)\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 2GiB or 512MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
