"""Frontend settings, read from the environment (gunicorn passes it through)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from intgrads_zmq.encoding.reply_size import (
    DEFAULT_MAX_JSON_TENSORS,
    DEFAULT_MAX_REPLY,
    ReplyLimits,
)
from intgrads_zmq.options import Limits
from intgrads_zmq.service.endpoints import BROKER_ENV, default_client_endpoint, prepare_private
from intgrads_zmq.service.security import (
    CLIENT_KEY_ENV,
    REQUIRE_CURVE_ENV,
    SERVER_KEY_ENV,
    CurveClient,
    client_curve_from_env,
    curve_needed,
    env_flag,
)
from intgrads_zmq.sizes import parse_bytes


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_bytes(name: str, default: int) -> int:
    """A byte count: '1GiB', '512MiB' or a plain number."""
    value = os.environ.get(name)
    return parse_bytes(value) if value else default


@dataclass(frozen=True)
class FrontendSettings:
    """Where the broker is, how long a request may take, how big a body may be."""

    broker: str = field(default_factory=default_client_endpoint)
    timeout: float = 600.0  # seconds: the deadline given to each request
    max_body_bytes: int = 1 << 20
    body_timeout: float = 30.0  # seconds for a whole request body to arrive (else 408)
    connect_wait: float = 1.0  # seconds to wait for the broker before a 503
    status_timeout: float = 2.0
    # Used as given for max_sequences / max_sequence_chars; for max_steps and
    # max_length only when the broker cannot say what its workers enforce.
    limits: Limits = Limits()
    # The frontend's CURVE key pair, for a broker whose frontend port uses CURVE
    # (INTGRADS_SERVER_KEY / INTGRADS_CLIENT_KEY); require_curve: refuse plain TCP.
    curve: CurveClient | None = None
    require_curve: bool = False
    # Reply bodies (413 above; see intgrads_zmq/encoding/reply_size.py): any
    # reply (INTGRADS_MAX_REPLY), and the tensor data a JSON reply may carry
    # (INTGRADS_MAX_JSON_TENSORS).
    max_reply_bytes: int = DEFAULT_MAX_REPLY
    max_json_tensor_bytes: int = DEFAULT_MAX_JSON_TENSORS

    @property
    def reply_limits(self) -> ReplyLimits:
        return ReplyLimits(self.max_reply_bytes, self.max_json_tensor_bytes)

    @classmethod
    def from_env(cls) -> FrontendSettings:
        """The settings the environment gives, checked (ValueError when they cannot work)."""
        settings = cls._read_env()
        settings.check_broker_link()
        return settings

    def check_broker_link(self) -> None:
        """Refuse, at start, a link to the broker that cannot work or is not
        safe: a TCP endpoint beyond loopback (or any TCP endpoint with
        INTGRADS_REQUIRE_CURVE=1) without a key pair, unreadable key files, a
        private socket directory that is not private."""
        if self.curve is not None:
            self.curve.check()
        elif curve_needed(self.broker, everywhere=self.require_curve):
            why = "leaves this host" if not self.require_curve else f"is TCP and {REQUIRE_CURVE_ENV} is set"
            raise ValueError(f"the broker endpoint {self.broker} {why}: the broker only accepts frontends with "
                             f"a CURVE key there; set {SERVER_KEY_ENV} (the broker's public key file) and "
                             f"{CLIENT_KEY_ENV} (a frontendN.key_secret from 'intgrads-broker keys')")
        prepare_private(self.broker)

    @classmethod
    def _read_env(cls) -> FrontendSettings:
        return cls(
            broker=os.environ.get(BROKER_ENV) or default_client_endpoint(),
            curve=client_curve_from_env(),
            require_curve=env_flag(os.environ, REQUIRE_CURVE_ENV),
            timeout=_env_float("INTGRADS_TIMEOUT", 600.0),
            max_body_bytes=_env_int("INTGRADS_MAX_BODY", 1 << 20),
            body_timeout=_env_float("INTGRADS_BODY_TIMEOUT", 30.0),
            connect_wait=_env_float("INTGRADS_CONNECT_WAIT", 1.0),
            max_reply_bytes=_env_bytes("INTGRADS_MAX_REPLY", DEFAULT_MAX_REPLY),
            max_json_tensor_bytes=_env_bytes("INTGRADS_MAX_JSON_TENSORS", DEFAULT_MAX_JSON_TENSORS),
            limits=Limits(
                max_steps=_env_int("INTGRADS_MAX_STEPS", Limits.max_steps),
                max_length=_env_int("INTGRADS_MAX_LENGTH", Limits.max_length),
                max_sequences=_env_int("INTGRADS_MAX_SEQUENCES", Limits.max_sequences),
            ),
        )
