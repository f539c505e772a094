"""CURVE authentication for workers and frontends that reach the broker over TCP.

``intgrads-broker keys --dir DIR`` writes, with pyzmq's certificate helpers,
a broker key pair, worker key pairs (public halves in ``DIR/authorized``) and
frontend key pairs (public halves in ``DIR/frontends``). A broker started with
``--keys DIR`` is a CURVE server on its backend, and on its frontend too when
that port leaves the host (or when ``--curve-on-loopback`` asks for it). One
ZAP handler vets both sockets, each under its own domain: a worker key never
opens the frontend port and a frontend key never registers a worker, since a
frontend may read every model's status and submit texts, and a worker
receives other people's texts. The broker's own key pair is a frontend key
too: whoever holds ``broker.key_secret`` runs that broker anyway, and it lets
``intgrads-broker status`` on the broker's host (a liveness probe) talk to a
CURVE frontend port with no extra key. A peer without an authorised key
never completes the handshake, so it is never sent anything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .endpoints import ipc_path, is_local_endpoint, scheme_of

SERVER_KEY_ENV = "INTGRADS_SERVER_KEY"  # a frontend's (or the CLI's) copy of the broker's public key
CLIENT_KEY_ENV = "INTGRADS_CLIENT_KEY"  # a frontend's own secret key file
REQUIRE_CURVE_ENV = "INTGRADS_REQUIRE_CURVE"  # 1: CURVE on loopback TCP too
BROKER_KEY = "broker"
AUTHORIZED = "authorized"  # workers' public keys
FRONTENDS = "frontends"  # frontends' public keys
WORKERS_DOMAIN = "workers"  # ZAP domains: which list a connecting key is checked against
FRONTENDS_DOMAIN = "frontends"


class AuthorisedKeys:
    """The public keys one ZAP domain accepts (pyzmq's credentials-provider
    interface: ``callback(domain, z85_key) -> bool``)."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    @classmethod
    def from_dir(cls, folder: Path | None, *extra: bytes) -> AuthorisedKeys:
        """Every public key in ``folder`` (``*.key`` files; none if it is absent), plus ``extra``."""
        keys = set(extra)
        if folder is not None and folder.is_dir():
            for path in sorted(folder.glob("*.key")):
                public, _ = zmq.auth.load_certificate(str(path))
                keys.add(public)
        return cls(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


@dataclass(frozen=True)
class CurveServer:
    """The broker side: its secret certificate, the authorised keys folders,
    and whether loopback TCP needs CURVE too (``everywhere``)."""

    secret_file: Path
    authorized_dir: Path
    frontends_dir: Path | None = None
    everywhere: bool = False

    @classmethod
    def from_dir(cls, folder: str | Path, *, everywhere: bool = False) -> CurveServer:
        base = Path(folder)
        secret = base / f"{BROKER_KEY}.key_secret"
        authorized = base / AUTHORIZED
        if not secret.is_file() or not authorized.is_dir():
            raise FileNotFoundError(
                f"{base} lacks {secret.name} or {AUTHORIZED}/: run 'intgrads-broker keys --dir {base}'"
            )
        return cls(secret, authorized, base / FRONTENDS, everywhere)

    def protects(self, endpoint: str, role: str) -> bool:
        """Whether the broker's ``role`` socket ('frontend' or 'backend') bound at
        ``endpoint`` is a CURVE server. The backend always is (as before: a
        keys folder means workers authenticate); the frontend when
        :func:`curve_needed` says so."""
        return role == "backend" or curve_needed(endpoint, everywhere=self.everywhere)

    def start(self, context: zmq.Context) -> ThreadAuthenticator:
        """Start the context's one ZAP handler, with a key list per domain."""
        public, _ = zmq.auth.load_certificate(str(self.secret_file))
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve_callback(WORKERS_DOMAIN, AuthorisedKeys.from_dir(self.authorized_dir))
        authenticator.configure_curve_callback(
            FRONTENDS_DOMAIN, AuthorisedKeys.from_dir(self.frontends_dir, public))
        return authenticator

    def serve(self, sock: zmq.Socket, domain: str) -> None:
        """Make ``sock`` (not yet bound) a CURVE server whose peers are checked
        against ``domain``'s keys (the ZAP handler must be started)."""
        public, secret = zmq.auth.load_certificate(str(self.secret_file))
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        sock.zap_domain = domain.encode()


def curve_needed(endpoint: str, *, everywhere: bool = False) -> bool:
    """Whether peers on ``endpoint`` must authenticate: always beyond loopback;
    with ``everywhere``, also on loopback TCP and on abstract ipc:// names
    (both open to every local user). ipc:// files in a private directory
    and inproc:// never need it."""
    if not is_local_endpoint(endpoint):
        return True
    if not everywhere:
        return False
    return scheme_of(endpoint) == "tcp" or (scheme_of(endpoint) == "ipc" and ipc_path(endpoint) is None)


@dataclass(frozen=True)
class CurveClient:
    """A worker's or a frontend's side: its own secret certificate and the broker's public key."""

    secret_file: Path
    server_public_file: Path

    def check(self) -> None:
        """Load both files now, so a wrong path or a public key given as the
        secret one is a clear error at start rather than refused handshakes."""
        for path in (self.secret_file, self.server_public_file):
            if not Path(path).is_file():
                raise FileNotFoundError(f"CURVE key file {path} does not exist")
        _, secret = zmq.auth.load_certificate(str(self.secret_file))
        if secret is None:
            raise ValueError(f"{self.secret_file} holds no secret key (give the .key_secret file)")
        zmq.auth.load_certificate(str(self.server_public_file))

    def apply(self, sock: zmq.Socket) -> None:
        public, secret = zmq.auth.load_certificate(str(self.secret_file))
        server_public, _ = zmq.auth.load_certificate(str(self.server_public_file))
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = server_public


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    """A yes/no setting: 1, true, yes or on (any case) mean yes."""
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def client_curve_from_env(environ: Mapping[str, str] | None = None) -> CurveClient | None:
    """A frontend's key pair named by $INTGRADS_SERVER_KEY and $INTGRADS_CLIENT_KEY
    (None when neither is set; ValueError when only one is)."""
    env = os.environ if environ is None else environ
    server, client = env.get(SERVER_KEY_ENV, ""), env.get(CLIENT_KEY_ENV, "")
    if bool(server) != bool(client):
        raise ValueError(f"{SERVER_KEY_ENV} (the broker's public key file) and {CLIENT_KEY_ENV} (this "
                         "frontend's secret key file) go together: set both or neither")
    return CurveClient(Path(client), Path(server)) if server else None


def _add_pairs(base: Path, prefix: str, count: int, authorised: Path) -> list[Path]:
    made = []
    index = 0
    for _ in range(count):
        while (base / f"{prefix}{index}.key").exists():
            index += 1
        public, secret = (Path(p) for p in zmq.auth.create_certificates(str(base), f"{prefix}{index}"))
        shutil.copy(public, authorised / public.name)
        made += [public, secret]
    return made


def make_keys(folder: str | Path, workers: int = 1, frontends: int = 1) -> list[Path]:
    """Create the broker pair (once), ``workers`` worker pairs and ``frontends``
    frontend pairs, each authorised in its own folder; returns the files made."""
    base = Path(folder)
    for sub in (AUTHORIZED, FRONTENDS):
        (base / sub).mkdir(parents=True, exist_ok=True)
    made = []
    if not (base / f"{BROKER_KEY}.key_secret").exists():
        made += [Path(p) for p in zmq.auth.create_certificates(str(base), BROKER_KEY)]
    made += _add_pairs(base, "worker", workers, base / AUTHORIZED)
    made += _add_pairs(base, "frontend", frontends, base / FRONTENDS)
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
