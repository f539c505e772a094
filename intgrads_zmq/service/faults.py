"""Fault injection for the reliability tests (inactive unless configured).

A worker reads ``INTGRADS_FAULTS`` (JSON) at start. Each fault triggers on
requests whose text contains a marker, so one test can poison some requests
and leave the rest alone::

    {"exit_on": "POISON"}          the worker process exits at once (os._exit)
    {"raise_on": "EXPLODE"}        the forward pass raises RuntimeError
    {"oom_above": 2}               any chunk of more than 2 steps is "out of memory"
    {"sleep_on": "SLOW", "sleep_seconds": 3}   the request takes 3 s longer

Production workers never set the variable; nothing here runs then.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass

from ..errors import Cancelled

ENV = "INTGRADS_FAULTS"


class InjectedFailure(RuntimeError):
    """The error a ``raise_on`` fault throws from inside the forward pass."""


@dataclass
class Faults:
    exit_on: str | None = None
    raise_on: str | None = None
    oom_above: int | None = None
    sleep_on: str | None = None
    sleep_seconds: float = 0.0
    _text: str = ""

    @classmethod
    def from_env(cls) -> Faults | None:
        raw = os.environ.get(ENV)
        if not raw:
            return None
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__ and not k.startswith("_")})

    def before_request(self, text: str, cancelled: threading.Event | None = None) -> None:
        """``cancelled`` cuts a sleep short (as a chunk boundary would), so
        tests of cancellation can use a slow request that is not compute."""
        self._text = text
        if self.exit_on and self.exit_on in text:
            os._exit(17)
        if self.sleep_on and self.sleep_on in text:
            if cancelled is None:
                time.sleep(self.sleep_seconds)
            elif cancelled.wait(self.sleep_seconds):
                raise Cancelled("the request was cancelled while it slept (injected fault)")

    def before_chunk(self, steps: int) -> None:
        if self.raise_on and self.raise_on in self._text:
            raise InjectedFailure("injected failure in the forward pass")
        if self.oom_above is not None and steps > self.oom_above:
            import torch

            raise torch.OutOfMemoryError(f"simulated out of memory for a chunk of {steps} steps")
