"""Integrated and intermediate gradients in one pass over the path."""

from .attribution import AttributionResult, attribute, resolve_target
from .memory import ChunkPlanner
from .rules import path_rule

__all__ = ["AttributionResult", "ChunkPlanner", "attribute", "path_rule", "resolve_target"]
