"""The service spread over namespace hosts: a front host and two gpu hosts.

front: ``intgrads-broker start --workers 0`` (frontend port on its loopback,
CURVE backend on every address) and gunicorn on its loopback; gpu1, gpu2:
one ``intgrads-broker worker --connect tcp://<front>:5556`` each, with their
own CURVE key. The test talks to gunicorn and to the broker from threads that
live in the front namespace.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from intgrads_zmq.service.endpoints import TCP_CLIENT_ENDPOINT, TCP_WORKER_ENDPOINT
from intgrads_zmq.testing.netns import Host, Lab
from intgrads_zmq.testing.stack import PYTHON, alive, descendants, http, stop_process, wait_until

FRONTEND_PORT = int(TCP_CLIENT_ENDPOINT.rsplit(":", 1)[1])
BACKEND_PORT = int(TCP_WORKER_ENDPOINT.rsplit(":", 1)[1])
HTTP_PORT = 8888
HEARTBEAT = "0.5"  # seconds, broker and workers alike: a silent worker is dropped after 1.5 s
MODEL = "tiny"
SLOW_FAULT = {"INTGRADS_FAULTS": json.dumps({"sleep_on": "SLOW", "sleep_seconds": 3})}


def log_time(line: str) -> float:
    """The epoch time of a log line (logging's asctime, local time, ms)."""
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


@dataclass
class Cluster:
    lab: Lab
    folder: Path
    keys: Path
    model_dir: Path
    broker: subprocess.Popen | None = None
    broker_logs: list[Path] = field(default_factory=list)
    gunicorn: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)  # gpu host name -> worker command
    _status_pool: ThreadPoolExecutor | None = None
    _client: Any = None

    # processes ------------------------------------------------------------
    def start_broker(self) -> None:
        log = self.folder / f"broker-{len(self.broker_logs)}.log"
        self.broker_logs.append(log)
        self.broker = self.lab.popen(self.lab.front, [
            PYTHON, "-m", "intgrads_zmq.cli", "start", "--model", str(self.model_dir), "--name", MODEL,
            "--workers", "0", "--cpu", "--frontend", f"tcp://127.0.0.1:{FRONTEND_PORT}",
            "--backend", f"tcp://0.0.0.0:{BACKEND_PORT}", "--keys", str(self.keys), "--heartbeat", HEARTBEAT,
        ], log=log)

    def kill_broker(self) -> None:
        """SIGKILL, as a crashed host would."""
        assert self.broker is not None
        self.broker.kill()
        self.broker.wait(timeout=20)

    def start_gunicorn(self) -> None:
        self.gunicorn = self.lab.popen(self.lab.front, [
            PYTHON, "-m", "gunicorn", "-c", "frontend/gunicorn.conf.py", "--bind", f"127.0.0.1:{HTTP_PORT}",
            "frontend:app",
        ], log=self.folder / "gunicorn.log", env={
            "INTGRADS_BROKER": f"tcp://127.0.0.1:{FRONTEND_PORT}", "INTGRADS_ACCESS_LOG": "",
        })
        wait_until(lambda: self._healthz() == 200, 60, "gunicorn in the front host to serve")

    def _healthz(self) -> int | None:
        try:
            return self.in_front(http, "GET", f"http://127.0.0.1:{HTTP_PORT}/healthz", timeout=2)[0]
        except OSError:
            return None

    def worker_command(self, host: Host, *, secret: Path, server_key: Path, name: str = MODEL,
                       port: int = BACKEND_PORT) -> list[str]:
        return [PYTHON, "-m", "intgrads_zmq.cli", "worker", "--connect", f"tcp://{host.front_address}:{port}",
                "--model", str(self.model_dir), "--name", name, "--cpu", "--heartbeat", HEARTBEAT,
                "--server-key", str(server_key), "--client-key", str(secret)]

    def start_worker(self, host: Host, index: int) -> None:
        """The host's own worker, with its authorised key (``workerN.key_secret``)."""
        command = self.worker_command(host, secret=self.keys / f"worker{index}.key_secret",
                                      server_key=self.keys / "broker.key")
        self.workers[host.name] = self.lab.popen(host, command, log=self.folder / f"{host.name}.log",
                                                 env=SLOW_FAULT)

    # talking to the front host --------------------------------------------
    def in_front(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._status_pool is None:
            self._status_pool = self.lab.executor(self.lab.front, 1)
        return self._status_pool.submit(fn, *args, **kwargs).result()

    def status(self) -> dict[str, Any]:
        return self.in_front(self._status_in_front)

    def _status_in_front(self) -> dict[str, Any]:
        import zmq

        from intgrads_zmq.service.broker_client import BrokerClient

        if self._client is None:  # made on this thread: its context's I/O thread lives in the front host
            self._client = BrokerClient(f"tcp://127.0.0.1:{FRONTEND_PORT}", context=zmq.Context())
        return self._client.status(timeout=2.0)

    def post(self, text: str, *, n_steps: int = 4, model: str = MODEL, timeout: float = 60,
             fmt: str | None = None) -> tuple[int, bytes]:
        """POST one request to gunicorn (call from a thread inside the front host)."""
        body = json.dumps({"sequence": text, "n_steps": n_steps}).encode()
        code, _, reply = http("POST", f"http://127.0.0.1:{HTTP_PORT}/model/{model}" + (f"?format={fmt}" if fmt else ""), data=body,
                              headers={"Content-Type": "application/json"}, timeout=timeout)
        return code, reply

    # what the broker knows ------------------------------------------------
    def host_of(self, pid: int) -> str | None:
        """The gpu host whose worker command started process ``pid``."""
        for name, process in self.workers.items():
            if pid in descendants(process.pid):
                return name
        return None

    def registered(self, model: str = MODEL) -> dict[str, dict[str, Any]]:
        """gpu host name -> the broker's record of that host's worker."""
        try:
            workers = self.status()["workers"]
        except Exception:  # noqa: BLE001 - a broker that is restarting answers nothing yet
            return {}
        return {self.host_of(w["pid"]) or f"pid {w['pid']}": w for w in workers if w["model"] == model}

    def wait_registered(self, hosts: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
        def all_in() -> dict[str, dict[str, Any]] | None:
            found = self.registered()
            return found if set(hosts) <= set(found) else None

        return wait_until(all_in, timeout, f"workers of {hosts} to be registered")

    def counters(self) -> dict[str, int]:
        """The broker's event counters (asked up to 5 times: a busy machine may miss one deadline)."""
        for _ in range(4):
            try:
                return self.status().get("counters", {})
            except Exception:  # noqa: BLE001 - asked again below, and the last failure is raised
                continue
        return self.status().get("counters", {})

    def ready(self) -> bool:
        """gunicorn's /readyz answers 200 (what a load balancer waits for)."""
        try:
            return self.in_front(http, "GET", f"http://127.0.0.1:{HTTP_PORT}/readyz", timeout=5)[0] == 200
        except OSError:
            return False

    def broker_log(self) -> str:
        return self.broker_logs[-1].read_text(errors="replace")

    def ensure_healthy(self) -> None:
        """Back to the starting state: links up, a broker, both workers registered."""
        for host in self.lab.gpus:
            self.lab.link_up(host)
        if self.broker is None or self.broker.poll() is not None:
            self.start_broker()
        for index, host in enumerate(self.lab.gpus):
            if host.name not in self.workers or self.workers[host.name].poll() is not None:
                self.start_worker(host, index)
        self.wait_registered([h.name for h in self.lab.gpus], timeout=90)

    def close(self) -> None:
        if self._client is not None:
            self.in_front(self._client.close)
        if self._status_pool is not None:
            self._status_pool.shutdown()
        for process in [*self.workers.values(), self.gunicorn, self.broker]:
            if process is not None and alive(process.pid):
                stop_process(process, timeout=15)
        self.lab.close()

