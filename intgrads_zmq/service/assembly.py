"""Process assembly for the CLI: broker + supervised workers (+ gunicorn).

Signals only set flags here (SIGTERM and Ctrl-C ask the broker to stop); the
broker then answers what it holds, the workers are stopped, and the process
exits 0. Children die with their parent (PR_SET_PDEATHSIG), so even a killed
broker leaves no orphans.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..models.spec import ModelSpec
from .broker import CLOSE_LINGER_MS, Broker, BrokerSettings
from .endpoints import BROKER_ENV, default_client_endpoint, ensure_private_dir
from .processes import WorkerExit, die_with_parent, stop_processes
from .security import (
    CLIENT_KEY_ENV,
    SERVER_KEY_ENV,
    CurveClient,
    CurveServer,
    ensure_local_worker_key,
)
from .settings import ServeSettings
from .supervisor import Supervisor
from .worker import WorkerConfig

log = logging.getLogger("intgrads")


def local_connect_endpoint(bind_endpoint: str) -> str:
    """Where a worker on this host connects for a broker bound to ``bind_endpoint``."""
    scheme, _, rest = bind_endpoint.partition("://")
    if scheme != "tcp":
        return bind_endpoint
    host, _, port = rest.rpartition(":")
    if host in ("*", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"tcp://{host}:{port}"


def _on_signals(callback: Any) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: callback())


def plan_workers(connect: str, spec: ModelSpec, settings: ServeSettings,
                 curve: CurveClient | None = None) -> list[WorkerConfig]:
    """Plan device placements and build one WorkerConfig per local worker."""
    from .devices import (
        available_cores,
        check_dtype,
        plan_cpu_workers,
        plan_gpu_groups,
        visible_gpus,
    )

    cuda = bool(visible_gpus()) if settings.cuda is None else settings.cuda
    if cuda:
        placements = plan_gpu_groups(visible_gpus(), settings.num_cuda_devs)
        if settings.workers is not None:
            placements = placements[:settings.workers]
    elif settings.workers == 0:
        placements = []
    else:
        placements = plan_cpu_workers(1 if settings.workers is None else settings.workers,
                                      available_cores())
    for placement in placements:
        check_dtype(settings.dtype, placement.device)
    return [
        WorkerConfig(connect=connect, model=spec, placement=placement, dtype=settings.dtype,
                     defaults=settings.request_defaults(), limits=settings.request_limits(),
                     memory_budget=settings.memory_budget, curve=curve)
        for placement in placements
    ]


def build_broker(spec: ModelSpec, settings: ServeSettings, *, frontend: str, backend: str,
                 queue_bound: int = 64, timeout: float = 600.0, heartbeat: float = 1.0,
                 keys: str | None = None, job_ttl: float = BrokerSettings.job_ttl,
                 job_store_bytes: int = BrokerSettings.job_store_bytes,
                 curve_on_loopback: bool = False) -> tuple[Broker, Supervisor]:
    """The broker (bound) and the supervisor of its local workers.
    ``curve_on_loopback``: frontends and workers on loopback TCP must
    authenticate too (needs ``keys``)."""
    if curve_on_loopback and not keys:
        raise ValueError("CURVE on loopback needs keys: give --keys DIR (intgrads-broker keys makes them)")
    curve = CurveServer.from_dir(keys, everywhere=curve_on_loopback) if keys else None
    # Only a broker that starts local workers needs a key for them: a broker-only
    # start (--workers 0) must run from a read-only keys folder (a mounted Secret).
    worker_curve = ensure_local_worker_key(keys) if keys and settings.workers != 0 else None
    # A broker-only start (--workers 0) plans nothing: planning imports torch,
    # seconds before the sockets are bound that such a broker need not wait.
    configs = [] if settings.workers == 0 else plan_workers(
        local_connect_endpoint(backend), spec, settings, worker_curve)
    for config in configs:
        config.heartbeat_interval = heartbeat
    broker = Broker(BrokerSettings(
        frontend=frontend, backend=backend, heartbeat_interval=heartbeat, queue_bound=queue_bound,
        default_timeout=timeout, expected_models=(spec.name,) if configs else (),
        default_model=spec.name if configs else None, curve=curve,
        job_ttl=job_ttl, job_store_bytes=job_store_bytes,
    ))
    broker.bind()
    return broker, Supervisor(configs)


def run_broker(spec: ModelSpec, settings: ServeSettings, **kwargs: Any) -> int:
    """``intgrads-broker start``: serve until SIGTERM / Ctrl-C, then exit 0."""
    broker, supervisor = build_broker(spec, settings, **kwargs)
    _on_signals(broker.request_stop)
    supervisor.start()
    print(gunicorn_hint(broker), flush=True)
    try:
        broker.run(on_tick=supervisor.poll)
    finally:
        supervisor.stop()
        _flush(broker)
    log.info("stopped")
    return 0


def gunicorn_hint(broker: Broker) -> str:
    """How to start the HTTP frontend against ``broker`` (printed at start)."""
    settings = broker.settings
    env = "" if settings.frontend == default_client_endpoint() else f"{BROKER_ENV}={settings.frontend} "
    curve = settings.curve
    if curve is not None and curve.protects(settings.frontend, "frontend"):
        env += (f"{SERVER_KEY_ENV}={curve.secret_file.with_suffix('.key')} "
                f"{CLIENT_KEY_ENV}=<a frontendN.key_secret authorised in {curve.frontends_dir}> ")
    return f"broker ready on {settings.frontend}; start the HTTP frontend with:\n  {env}gunicorn frontend"


def _flush(broker: Broker) -> None:
    """Terminate the broker's context: this waits (up to the sockets' linger)
    until the answers sent in the loop's last turn have left the process;
    exiting without it could drop them."""
    broker.context.destroy(linger=CLOSE_LINGER_MS)


# SIGTERM drains a worker: it finishes the request it holds. A remote worker host
# told to stop (a pod being replaced) waits this long for that before SIGKILL: the
# default request deadline plus a margin, so a drain never cuts a request short.
DRAIN_GRACE_SECONDS = 660.0


def run_workers(configs: list[WorkerConfig]) -> int:
    """``intgrads-broker worker``: supervise workers until SIGTERM / Ctrl-C, or
    until every one of them was drained (then there is nothing left to run).
    On SIGTERM the workers drain: each finishes its request, then exits."""
    stop = {"now": False}
    _on_signals(lambda: stop.update(now=True))
    supervisor = Supervisor(configs)
    supervisor.start()
    try:
        while not stop["now"] and not supervisor.all_drained:
            supervisor.poll()
            time.sleep(0.2)
    finally:
        supervisor.stop(grace=DRAIN_GRACE_SECONDS)
    return 0


def _gunicorn_dies_with_parent() -> None:  # runs in the gunicorn child before exec
    die_with_parent(signal.SIGTERM)


def start_gunicorn(broker_endpoint: str, host: str, port: int, workers: int = 1) -> subprocess.Popen:
    """Start ``gunicorn frontend:app`` pointed at the broker."""
    import frontend

    config = Path(frontend.__file__).parent / "gunicorn.conf.py"
    env = dict(os.environ, **{BROKER_ENV: broker_endpoint})
    command = [sys.executable, "-m", "gunicorn", "-c", str(config), "--bind", f"{host}:{port}",
               "--workers", str(workers), "frontend:app"]
    return subprocess.Popen(command, env=env, preexec_fn=_gunicorn_dies_with_parent)


def run_all_in_one(spec: ModelSpec, settings: ServeSettings, *, host: str, port: int,
                   http_workers: int = 1) -> int:
    """``intgrads`` / ``make serve``: broker, workers and gunicorn in one go."""
    # A folder of its own inside the private directory: several of these can run at once.
    sockets = Path(tempfile.mkdtemp(prefix="serve-", dir=ensure_private_dir()))
    frontend_ep, backend_ep = f"ipc://{sockets}/frontend", f"ipc://{sockets}/backend"
    broker, supervisor = build_broker(spec, settings, frontend=frontend_ep, backend=backend_ep)
    _on_signals(broker.request_stop)
    supervisor.start()
    http = start_gunicorn(frontend_ep, host, port, http_workers)
    announced = False

    def tick() -> list[WorkerExit]:
        nonlocal announced
        if http.poll() is not None:
            log.error("gunicorn exited with code %s; stopping", http.returncode)
            broker.request_stop()
        if not announced and broker.workers:
            announced = True
            print(
                f"\nready: http://{host}:{port}/ (web page) — try:\n"
                f"  curl http://{host}:{port}/model/ -d '{{\"sequence\": \"a great film\"}}' --output g.gzip\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )
        return supervisor.poll()

    try:
        broker.run(on_tick=tick)
    finally:
        stop_processes([http], grace=10.0)
        supervisor.stop()
        _flush(broker)
        for leftover in sockets.glob("*"):
            leftover.unlink(missing_ok=True)
        sockets.rmdir()
    return 0
