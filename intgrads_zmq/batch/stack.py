"""A private server for one run: ``intgrads-broker start`` + gunicorn on loopback.

``intgrads-batch --model PATH`` needs no server of its own: this starts the
same processes ``intgrads`` starts (the broker with its supervised workers,
then ``gunicorn frontend:app`` pointed at it) on ipc:// sockets in a
temporary folder and a free loopback port, and the run talks HTTP to it like
to any server, so both modes share one code path.

The children run in their own session, so a Ctrl-C at the terminal reaches
only the runner, which cancels its requests and then stops them in order
(gunicorn first, then the broker, which stops its workers). They also die
with the runner (PR_SET_PDEATHSIG) if it is killed outright.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..service.endpoints import BROKER_ENV
from ..service.processes import die_with_parent


class StackError(RuntimeError):
    """The private stack did not come up; the message quotes its log."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gunicorn_config() -> Path:
    """frontend/gunicorn.conf.py, found without importing the Falcon app."""
    spec = importlib.util.find_spec("frontend")
    if spec is None or spec.origin is None:
        raise StackError("the 'frontend' package is not installed (pip install intgrads-zmq)")
    return Path(spec.origin).parent / "gunicorn.conf.py"


def _child_setup() -> None:  # in the child, before exec
    os.setsid()
    die_with_parent(signal.SIGTERM)


class PrivateStack:
    """Broker + workers + gunicorn for one model, started and stopped by the runner."""

    def __init__(self, model: str, *, workers: int = 1, cuda: bool | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.model = model
        self.workers = workers
        self.cuda = cuda
        self.extra_args = list(extra_args or [])
        self.folder = Path(tempfile.mkdtemp(prefix="intgrads-batch-"))
        self.url = ""
        self.broker: subprocess.Popen | None = None
        self.http: subprocess.Popen | None = None

    def command(self) -> list[str]:
        model_args = [] if self.model == "demo" else ["--model", self.model]
        device = [] if self.cuda is None else ["--cuda" if self.cuda else "--cpu"]
        return [sys.executable, "-m", "intgrads_zmq.cli", "start", *model_args, *device,
                "--workers", str(self.workers), "--frontend", f"ipc://{self.folder}/frontend",
                "--backend", f"ipc://{self.folder}/backend", *self.extra_args]

    def log_tail(self, limit: int = 3000) -> str:
        parts = []
        for name in ("broker.log", "gunicorn.log"):
            path = self.folder / name
            if path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-limit:])
        return "\n".join(parts)

    def start(self, stop: threading.Event, timeout: float = 600.0) -> str:
        """Start everything and wait until ``/readyz`` says a worker serves the model."""
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        with (self.folder / "broker.log").open("wb") as log:
            self.broker = subprocess.Popen(self.command(), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, preexec_fn=_child_setup)
        port = _free_port()
        config = _gunicorn_config()
        http_env = dict(env, **{BROKER_ENV: f"ipc://{self.folder}/frontend", "INTGRADS_ACCESS_LOG": ""})
        with (self.folder / "gunicorn.log").open("wb") as log:
            self.http = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(config), "--bind", f"127.0.0.1:{port}",
                 "--workers", "1", "frontend:app"],
                env=http_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_child_setup)
        self.url = f"http://127.0.0.1:{port}"
        self._wait_ready(stop, timeout)
        return self.url

    def _wait_ready(self, stop: threading.Event, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            for name, process in (("broker", self.broker), ("gunicorn", self.http)):
                if process is not None and process.poll() is not None:
                    raise StackError(f"the private {name} exited with code {process.returncode}:\n"
                                     f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as err:
                try:
                    body = json.loads(err.read())
                    last = body.get("description", last)
                except ValueError:
                    pass
            except OSError as exc:
                last = str(exc)
            if stop.wait(0.25):
                raise StackError("interrupted while the private stack started")
        raise StackError(f"the private stack was not ready within {timeout:g} s ({last}):\n{self.log_tail()}")

    def stop(self, grace: float = 30.0) -> None:
        """gunicorn, then the broker (which stops its workers); SIGKILL after ``grace``."""
        for process in (self.http, self.broker):
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PrivateStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
