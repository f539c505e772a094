"""CURVE authentication for workers joining from other hosts.

``intgrads-broker keys --dir DIR`` writes a broker key pair and worker key
pairs with pyzmq's certificate helpers. The broker's backend becomes a CURVE
server whose ZAP authenticator accepts only the worker public keys found in
``DIR/authorized``; a worker presents its secret key and the broker's public
key. A peer without an authorised key never completes the handshake, so it is
never sent a request.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

BROKER_KEY = "broker"
AUTHORIZED = "authorized"


@dataclass(frozen=True)
class CurveServer:
    """The broker side: its secret certificate and the authorised keys folder."""

    secret_file: Path
    authorized_dir: Path

    @classmethod
    def from_dir(cls, folder: str | Path) -> CurveServer:
        base = Path(folder)
        secret = base / f"{BROKER_KEY}.key_secret"
        authorized = base / AUTHORIZED
        if not secret.is_file() or not authorized.is_dir():
            raise FileNotFoundError(
                f"{base} lacks {secret.name} or {AUTHORIZED}/: run 'intgrads-broker keys --dir {base}'"
            )
        return cls(secret, authorized)

    def apply(self, sock: zmq.Socket, context: zmq.Context) -> ThreadAuthenticator:
        """Make ``sock`` a CURVE server; start the ZAP handler that vets keys."""
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve(domain="*", location=str(self.authorized_dir))
        public, secret = zmq.auth.load_certificate(str(self.secret_file))
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        return authenticator


@dataclass(frozen=True)
class CurveClient:
    """The worker side: its own secret certificate and the broker's public key."""

    secret_file: Path
    server_public_file: Path

    def apply(self, sock: zmq.Socket) -> None:
        public, secret = zmq.auth.load_certificate(str(self.secret_file))
        server_public, _ = zmq.auth.load_certificate(str(self.server_public_file))
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = server_public


def make_keys(folder: str | Path, workers: int = 1) -> list[Path]:
    """Create the broker pair and ``workers`` worker pairs; authorise the latter."""
    base = Path(folder)
    authorized = base / AUTHORIZED
    authorized.mkdir(parents=True, exist_ok=True)
    made = []
    if not (base / f"{BROKER_KEY}.key_secret").exists():
        made += [Path(p) for p in zmq.auth.create_certificates(str(base), BROKER_KEY)]
    for index in range(workers):
        name = f"worker{index}"
        while (base / f"{name}.key").exists():
            index += 1000
            name = f"worker{index}"
        public, secret = (Path(p) for p in zmq.auth.create_certificates(str(base), name))
        shutil.copy(public, authorized / public.name)
        made += [public, secret]
    for path in base.glob("*.key_secret"):
        path.chmod(0o600)
    return made


LOCAL_WORKER_KEY = "local-worker"


def ensure_local_worker_key(folder: str | Path) -> CurveClient:
    """The key pair the broker's own supervised workers use (made on first use)."""
    base = Path(folder)
    secret = base / f"{LOCAL_WORKER_KEY}.key_secret"
    if not secret.exists():
        public, secret_path = (Path(p) for p in zmq.auth.create_certificates(str(base), LOCAL_WORKER_KEY))
        (base / AUTHORIZED).mkdir(parents=True, exist_ok=True)
        shutil.copy(public, base / AUTHORIZED / public.name)
        secret_path.chmod(0o600)
    return CurveClient(secret, base / f"{BROKER_KEY}.key")
