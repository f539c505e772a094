"""Run the real stack for tests: broker + worker processes (+ gunicorn).

Everything is a real process talking real ZeroMQ and HTTP on this host:
``python -m intgrads_zmq.cli start`` for the broker and its supervised
workers, ``python -m gunicorn frontend:app`` for HTTP. Broker endpoints are
ipc:// sockets in a temporary folder (no port clashes); gunicorn gets a free
TCP port. Teardown sends SIGTERM and checks that no process is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_process(process: subprocess.Popen, timeout: float) -> int | None:
    """The one teardown for a child process: SIGTERM, wait up to ``timeout``
    seconds, then SIGKILL. Returns the exit code, or None if it had to be killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def kill_survivors(pids: list[int], grace: float) -> list[int]:
    """Give ``pids`` ``grace`` seconds to exit, SIGKILL those still alive, return them."""
    deadline = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def terminate_tree(process: subprocess.Popen, timeout: float, what: str) -> int:
    """SIGTERM ``process``, wait for it, and assert none of its descendants
    outlives it (any found are killed so one failure does not leak)."""
    pids = descendants(process.pid)
    code = stop_process(process, timeout)
    left = kill_survivors(pids, grace=10)
    if code is None:
        raise TimeoutError(f"the {what} did not exit within {timeout} s of SIGTERM (killed)")
    assert not left, f"processes left after the {what} exited: {left}"
    return code


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


@dataclass
class Broker:
    """A running ``intgrads-broker start`` process and its endpoints."""

    process: subprocess.Popen
    frontend: str
    backend: str
    log: Path
    workers_expected: int
    env: dict[str, str] = field(default_factory=dict)
    curve: Any = None  # a CurveClient for a frontend port that requires CURVE

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        from intgrads_zmq.service.broker_client import BrokerClient

        with BrokerClient(self.frontend, connect_wait=timeout, curve=self.curve) as client:
            return client.status(timeout=timeout)

    def wait_ready(self, workers: int | None = None, timeout: float = 90.0, model: str | None = None) -> dict:
        wanted = self.workers_expected if workers is None else workers
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited early:\n{self.log.read_text()[-3000:]}")
            try:
                last = self.status(timeout=1.0)
                models = last["models"]
                counts = [m["workers"] for n, m in models.items() if model in (None, n)]
                if counts and sum(counts) >= wanted:
                    return last
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"workers not ready: {last}\n{self.log.read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"]]

    def busy_worker_pid(self, timeout: float = 10.0, model: str | None = None) -> int:
        """The pid of a worker holding a request (waits for one to become busy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [w["pid"] for w in self.status()["workers"]
                    if w["state"] == "busy" and model in (None, w["model"])]
            if busy:
                return busy[0]
            time.sleep(0.05)
        raise TimeoutError("no worker became busy")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash would; supervised workers die with it (PR_SET_PDEATHSIG)."""
        pids = descendants(self.process.pid)
        self.process.kill()
        self.process.wait(timeout=30)
        wait_until(lambda: not any(alive(p) for p in pids), 20, "the broker's workers to die with it")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, and assert nothing of ours is left running."""
        return terminate_tree(self.process, timeout, "broker")


def start_broker(model_args: list[str], *, workers: int = 1, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, folder: Path | None = None,
                 frontend: str | None = None, backend: str | None = None, private: bool = False,
                 umask: int = -1) -> Broker:
    """``intgrads-broker start`` on ipc:// endpoints in ``folder`` (or the ones
    given). ``private``: no endpoint flags at all, so the broker binds its
    defaults, the private directory that ``env`` (XDG_RUNTIME_DIR) implies.
    ``umask``: the broker process's (-1: inherited)."""
    folder = folder or Path(tempfile.mkdtemp(prefix="igz-"))
    full_env = base_env(env)
    if private:
        from intgrads_zmq.service.endpoints import default_client_endpoint, default_worker_endpoint

        frontend, backend = default_client_endpoint(full_env), default_worker_endpoint(full_env)
        endpoint_args = []
    else:
        frontend = frontend or f"ipc://{folder}/frontend"
        backend = backend or f"ipc://{folder}/backend"
        endpoint_args = ["--frontend", frontend, "--backend", backend]
    log = folder / f"broker-{time.time_ns()}.log"
    command = [PYTHON, "-m", "intgrads_zmq.cli", "start", *model_args, "--cpu", "--workers", str(workers),
               *endpoint_args, "--heartbeat", "0.5", *(extra_args or [])]
    process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               umask=umask)
    return Broker(process, frontend, backend, log, workers, full_env)


@dataclass
class RemoteWorker:
    """``intgrads-broker worker --connect ...``: workers a broker does not supervise
    (another host's, in production); they outlive a broker crash and re-register."""

    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait, and assert no worker process is left."""
        terminate_tree(self.process, timeout, "worker")


def start_remote_worker(backend: str | None, model_args: list[str], *, folder: Path,
                        env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> RemoteWorker:
    """``intgrads-broker worker --connect BACKEND ...`` (None: no --connect, so the
    worker finds this user's private default, as ``env`` implies it)."""
    log = folder / f"worker-{time.time_ns()}.log"
    connect = [] if backend is None else ["--connect", backend]
    command = [PYTHON, "-m", "intgrads_zmq.cli", "worker", *connect, *model_args, "--cpu",
               "--heartbeat", "0.5", *(extra_args or [])]
    process = subprocess.Popen(command, cwd=REPO, env=base_env(env), stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)
    return RemoteWorker(process, log)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Frontend:
    """A running gunicorn serving ``frontend:app``."""

    process: subprocess.Popen
    url: str
    log: Path

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        return http("GET", self.url + path, timeout=timeout)

    def post(self, path: str, body: bytes | dict | None, headers: dict[str, str] | None = None,
             timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        return http("POST", self.url + path, data=data, headers=headers, timeout=timeout)

    def wait_serving(self, timeout: float) -> None:
        """Wait until ``/healthz`` answers 200; RuntimeError if gunicorn exits first,
        TimeoutError after ``timeout`` seconds (both quote the end of its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log.read_text()[-3000:]}")
            try:
                if self.get("/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gunicorn did not serve within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM gunicorn and reap; its workers are killed if they linger."""
        pids = descendants(self.process.pid)
        stop_process(self.process, 20)
        kill_survivors(pids, grace=0)


def start_frontend(broker_endpoint: str | None, *, env: dict[str, str] | None = None,
                   folder: Path | None = None, wait: bool = True) -> Frontend:
    """gunicorn serving ``frontend:app`` on a free loopback port, pointed at
    ``broker_endpoint`` (None: INTGRADS_BROKER unset, so the frontend finds the
    private default by itself). ``wait``: until /healthz answers."""
    folder = folder or Path(tempfile.mkdtemp(prefix="igz-http-"))
    port = free_port()
    log = folder / f"gunicorn-{port}.log"
    extra = {"INTGRADS_ACCESS_LOG": ""} | ({} if broker_endpoint is None else {"INTGRADS_BROKER": broker_endpoint})
    full_env = base_env({**extra, **(env or {})})
    if broker_endpoint is None and "INTGRADS_BROKER" not in (env or {}):
        full_env.pop("INTGRADS_BROKER", None)
    command = [PYTHON, "-m", "gunicorn", "-c", str(REPO / "frontend" / "gunicorn.conf.py"),
               "--bind", f"127.0.0.1:{port}", "frontend:app"]
    process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    frontend = Frontend(process, f"http://127.0.0.1:{port}", log)
    if wait:
        frontend.wait_serving(30)
    return frontend


def raw_http(port: int, request: bytes, *, timeout: float = 10.0, half_close: bool = False,
             pause: float = 0.0) -> tuple[int | None, dict[str, str], bytes]:
    """Send raw bytes to 127.0.0.1:``port`` and parse whatever HTTP answer comes.

    For requests http.client refuses to send (bad request lines, conflicting
    headers, partial bodies). ``pause`` waits between writing and reading (a
    stalled client); ``half_close`` then shuts the write side so the server
    sees EOF. Returns (None, {}, b"") when the server closes without answering.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except OSError:  # the server may answer and close before reading it all
            pass
        if pause:
            time.sleep(pause)
        if half_close:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int | None, dict[str, str], bytes]:
    """Read one HTTP response (to its Content-Length, its last chunk, or EOF)
    from ``sock``; a chunked body is returned de-chunked."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = [line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0]):
                break
            if b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n"):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/"):
        return None, {}, data
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    return status, headers, body


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked HTTP body (as much as arrived)."""
    out, rest = [], body
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


def http(method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange; returns (status, headers, body) for any status."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


@contextlib.contextmanager
def running_stack(model_args: list[str], *, folder: Path, workers: int = 1,
                  env: dict[str, str] | None = None, frontend_env: dict[str, str] | None = None,
                  ) -> Iterator[tuple[Broker, Frontend]]:
    """A broker with ``workers`` local workers of one model, ready, and gunicorn in
    front of it; both stopped (and checked for leftovers) on the way out."""
    broker = start_broker(model_args, workers=workers, env=env, folder=folder)
    frontend = None
    try:
        broker.wait_ready()
        frontend = start_frontend(broker.frontend, env=frontend_env, folder=folder)
        yield broker, frontend
    finally:
        if frontend is not None:
            frontend.stop()
        broker.stop()
