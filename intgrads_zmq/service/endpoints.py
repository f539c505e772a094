"""ZeroMQ endpoints: the private defaults, and whether an endpoint leaves the host.

On a shared machine a loopback TCP port is open to every local user: anyone
could register as a worker (and read other users' texts) or talk to the
broker as a frontend. So by default the broker, its frontends and its local
workers meet on ``ipc://`` sockets in a directory only this user may enter
(mode 0700): ``$XDG_RUNTIME_DIR/intgrads`` when the session has a runtime
directory of its own, else ``/tmp/intgrads-<uid>``. Both sides compute the
same path, so ``intgrads-broker start`` and ``gunicorn frontend`` find each
other with no flag. A directory that is not ours, or that others may enter,
is refused rather than used. TCP is used only when an endpoint asks for it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
BROKER_ENV = "INTGRADS_BROKER"
FRONTEND_SOCKET = "frontend"  # file names inside the private directory
BACKEND_SOCKET = "backend"
# The ports used when TCP is asked for (Kubernetes, compose, other hosts).
TCP_CLIENT_ENDPOINT = "tcp://127.0.0.1:5555"  # frontends -> the broker's frontend side
TCP_WORKER_ENDPOINT = "tcp://127.0.0.1:5556"  # workers -> the broker's backend side
# BrokerSettings' in-code defaults; the CLI and the frontend default to the private ipc:// ones.
DEFAULT_CLIENT_ENDPOINT = TCP_CLIENT_ENDPOINT
DEFAULT_WORKER_ENDPOINT = TCP_WORKER_ENDPOINT


class PrivateDirError(ValueError):
    """The private socket directory exists but is not private (or cannot be made)."""


def scheme_of(endpoint: str) -> str:
    return endpoint.partition("://")[0]


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: assume reachable


def private_dir(environ: Mapping[str, str] | None = None) -> Path:
    """This user's socket directory (computed, not created): under
    $XDG_RUNTIME_DIR when it is an absolute directory owned by us (after ``su``
    it may still name another user's), else /tmp/intgrads-<uid>. ``environ``:
    another process's environment (default: this one's)."""
    runtime = (os.environ if environ is None else environ).get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        try:
            info = os.stat(runtime)
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            return Path(runtime) / "intgrads"
    return Path("/tmp") / f"intgrads-{os.geteuid()}"


def ensure_private_dir(path: Path | None = None) -> Path:
    """Create ``path`` (default :func:`private_dir`) with mode 0700, or check the
    one that exists: a real directory (not a link), owned by this user, that
    no group or other user may read, write or enter. PrivateDirError otherwise."""
    folder = path or private_dir()
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise PrivateDirError(f"cannot create the private socket directory {folder}: {exc.strerror}") from exc
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise PrivateDirError(f"{folder} should be this user's private socket directory but is not a "
                              "directory (a link or a file): remove it, or pass explicit endpoints")
    if info.st_uid != os.geteuid():
        raise PrivateDirError(f"{folder} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}): "
                              "another user may have made it to intercept the sockets; remove it, or set "
                              "XDG_RUNTIME_DIR, or pass explicit endpoints")
    if info.st_mode & 0o077:
        raise PrivateDirError(f"{folder} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}): "
                              f"run 'chmod 700 {folder}', or remove it")
    return folder


def default_client_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """Where frontends meet the broker unless told otherwise."""
    return f"ipc://{private_dir(environ) / FRONTEND_SOCKET}"


def default_worker_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """Where local workers meet the broker unless told otherwise."""
    return f"ipc://{private_dir(environ) / BACKEND_SOCKET}"


def broker_endpoint() -> str:
    """Where frontends find the broker: $INTGRADS_BROKER or the private default."""
    return os.environ.get(BROKER_ENV) or default_client_endpoint()


def ipc_path(endpoint: str) -> Path | None:
    """The file of an ipc:// endpoint (None for other schemes and for Linux's
    abstract namespace, ``ipc://@name``, which has no file)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "ipc" or rest.startswith("@"):
        return None
    return Path(rest)


def prepare_private(endpoint: str) -> str:
    """Before binding or connecting: an ipc:// endpoint in the private directory
    gets the directory made (or checked). Other endpoints are the caller's
    choice and are left as they are. Returns ``endpoint``."""
    path = ipc_path(endpoint)
    if path is not None and path.parent == private_dir():
        ensure_private_dir(path.parent)
    return endpoint


def ipc_in_use(endpoint: str) -> bool:
    """Whether a process listens on an ipc:// endpoint already. libzmq binds an
    ipc endpoint by replacing the file, so a second broker would silently take
    the first one's clients; the broker asks this first and refuses."""
    path = ipc_path(endpoint)
    if path is None or not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)
    finally:
        probe.close()
    return True
