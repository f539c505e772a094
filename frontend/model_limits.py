"""The limits a request is checked against: the serving workers' own.

The workers enforce ``max_steps`` and ``max_length`` (``intgrads --max-steps``
sets them) and ``max_target_classes`` (the most classes ``target: "all"``
explains; only a worker knows its model's classes, so only it checks) and
report them to the broker, which lists them per model in its status.
Checking against those values, rather than against caps of our own, keeps
one source of truth: what /models offers is what POST /model/ accepts.
The status is cached for a few seconds per process; the frontend's own
defaults (INTGRADS_MAX_STEPS, ...) apply only when the broker cannot be asked
or does not know the model yet. How many texts one HTTP request may carry
(``max_sequences``) and how long each may be are HTTP-level limits and stay
the frontend's (a worker still refuses a text over its own length limit,
whoever sent it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from intgrads_zmq.errors import IntgradsError
from intgrads_zmq.options import Limits

WORKER_ENFORCED = ("max_steps", "max_length", "max_target_classes")
CACHE_SECONDS = 3.0


class StatusCache:
    """The broker's status, at most ``ttl`` seconds old (None while the broker
    does not answer: a failure is cached too, so a down broker does not cost
    every request a status timeout). Shared by the threads of a process."""

    def __init__(self, status: Callable[[], dict[str, Any]], ttl: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._status = status
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any] | None] | None = None

    def get(self) -> dict[str, Any] | None:
        now = self._clock()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
        try:
            status: dict[str, Any] | None = self._status()
        except IntgradsError:
            status = None
        with self._lock:
            self._cached = (now, status)
        return status

    def model(self, name: str | None) -> dict[str, Any] | None:
        """``name``'s entry (None: the default model's), if the broker knows it."""
        status = self.get()
        if not status:
            return None
        model = status.get("models", {}).get(name or status.get("default_model") or "")
        return model if isinstance(model, dict) else None


class ModelLimits:
    """Per-model limits from the broker's status (read through a StatusCache,
    which the frontend shares with the reply-size checks)."""

    def __init__(self, cache: StatusCache, fallback: Limits) -> None:
        self.cache = cache
        self.fallback = fallback

    def for_model(self, name: str | None) -> Limits:
        """The limits of ``name`` (None: the broker's default model)."""
        return limits_in_status(self.cache.get(), name, self.fallback)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def limits_in_status(status: dict[str, Any] | None, name: str | None, fallback: Limits) -> Limits:
    """``fallback`` with the worker-enforced limits that ``status`` reports for
    ``name`` (None: the default model); ``fallback`` itself if none are reported."""
    if not status:
        return fallback
    model = status.get("models", {}).get(name or status.get("default_model") or "")
    reported = model.get("limits") if isinstance(model, dict) else None
    bound = status.get("queue_bound")
    if _positive_int(bound) and bound < fallback.max_sequences:
        # A batch is queued whole or refused: more texts than the broker's
        # queue bound could never be admitted.
        fallback = replace(fallback, max_sequences=bound)
    if not isinstance(reported, dict):
        return fallback
    return replace(fallback, **{key: reported[key] for key in WORKER_ENFORCED if _positive_int(reported.get(key))})
