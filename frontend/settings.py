"""Frontend settings, read from the environment (gunicorn passes it through)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from intgrads_zmq.options import Limits
from intgrads_zmq.service.endpoints import BROKER_ENV, DEFAULT_CLIENT_ENDPOINT


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class FrontendSettings:
    """Where the broker is, how long a request may take, how big a body may be."""

    broker: str = DEFAULT_CLIENT_ENDPOINT
    timeout: float = 600.0  # seconds: the deadline given to each request
    max_body_bytes: int = 1 << 20
    body_timeout: float = 30.0  # seconds for a whole request body to arrive (else 408)
    connect_wait: float = 1.0  # seconds to wait for the broker before a 503
    status_timeout: float = 2.0
    # Used as given for max_sequences / max_sequence_chars; for max_steps and
    # max_length only when the broker cannot say what its workers enforce.
    limits: Limits = Limits()

    @classmethod
    def from_env(cls) -> FrontendSettings:
        return cls(
            broker=os.environ.get(BROKER_ENV, DEFAULT_CLIENT_ENDPOINT),
            timeout=_env_float("INTGRADS_TIMEOUT", 600.0),
            max_body_bytes=_env_int("INTGRADS_MAX_BODY", 1 << 20),
            body_timeout=_env_float("INTGRADS_BODY_TIMEOUT", 30.0),
            connect_wait=_env_float("INTGRADS_CONNECT_WAIT", 1.0),
            limits=Limits(
                max_steps=_env_int("INTGRADS_MAX_STEPS", Limits.max_steps),
                max_length=_env_int("INTGRADS_MAX_LENGTH", Limits.max_length),
                max_sequences=_env_int("INTGRADS_MAX_SEQUENCES", Limits.max_sequences),
            ),
        )
