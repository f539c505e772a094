"""Local ZeroMQ sockets let no other local user in (real processes).

The issue: in the split setup the broker listened on tcp://127.0.0.1:5555/5556
with no authentication, and any local user could register as a worker (and
receive other users' texts, forge replies, rewrite /models) or query the
broker as a frontend. Now:

* ``intgrads-broker start`` and ``gunicorn frontend``, with no flag and no
  INTGRADS_BROKER, meet on ipc:// sockets in the user's private directory
  (0700). Another uid (``nobody``, from a forked child of this root test
  process: root itself ignores file permissions) can reach neither socket;
  with the directory opened up (the control) it can, so it is the
  directory that keeps it out. The broker runs with umask 000 here, so its
  socket files are writable by anyone: nothing else protects them.
* A worker of the same user (``intgrads-broker worker`` with no --connect
  finds the private backend too) describing a served model differently
  (other limits) is refused and stops; /models does not change.
* With ``--curve-on-loopback``, loopback TCP ports take authorised CURVE keys
  only: gunicorn with a frontend key pair serves; a plain peer gets nowhere
  on either port; gunicorn without a key answers 503 (and with
  INTGRADS_REQUIRE_CURVE=1 refuses to start).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from intgrads_zmq.errors import BrokerUnavailable
from intgrads_zmq.service import protocol as p
from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.service.endpoints import ipc_path
from intgrads_zmq.service.security import CurveClient, make_keys
from intgrads_zmq.testing.stack import (
    free_port,
    start_broker,
    start_frontend,
    start_remote_worker,
    wait_until,
)

NOBODY = 65534
MODEL = ["--name", "tiny", "--n-steps", "4"]
REQUEST = {"sequence": "a great film", "n_steps": 4}


@pytest.fixture(scope="module")
def private_stack(tiny_bert_dir, tmp_path_factory):
    """The design card's split setup, no endpoint flag on either side; the
    session's runtime directory is a fresh one that other users may traverse
    (so only the private directory inside it stands in their way)."""
    folder = tmp_path_factory.mktemp("private")
    runtime = Path(tempfile.mkdtemp(prefix="igz-run-", dir="/tmp"))
    runtime.chmod(0o755)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    broker = start_broker(["--model", str(tiny_bert_dir), *MODEL], workers=1, folder=folder, env=env, private=True,
                          umask=0)
    http = None
    try:
        broker.wait_ready()
        http = start_frontend(None, env=env, folder=folder)
        yield broker, http, runtime
    finally:
        if http is not None:
            http.stop()
        broker.stop()
        for leftover in sorted(runtime.rglob("*"), reverse=True):
            leftover.unlink() if not leftover.is_dir() else leftover.rmdir()
        runtime.rmdir()


def test_broker_and_gunicorn_meet_on_private_sockets_with_no_flags(private_stack):
    broker, http, runtime = private_stack
    private = runtime / "intgrads"
    assert broker.frontend == f"ipc://{private}/frontend" and broker.backend == f"ipc://{private}/backend"
    assert "--frontend" not in broker.process.args and "INTGRADS_BROKER" not in broker.env
    assert stat.S_IMODE(private.stat().st_mode) == 0o700 and private.stat().st_uid == os.geteuid()
    for name in ("frontend", "backend"):
        assert stat.S_ISSOCK((private / name).stat().st_mode)
    code, _, body = http.post("/model/?format=json", REQUEST)
    assert code == 200, body[:300]
    assert json.loads(body)["model"] == "tiny"


def as_nobody(probe: Callable[[], Any]) -> Any:
    """Run ``probe`` in a forked child that dropped to uid/gid nobody; its JSON result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = probe()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"error": repr(exc)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def reach(frontend: str, backend: str) -> dict[str, Any]:
    """What another user gets from the broker's two sockets: a raw connect to
    each, and a status request as a frontend would send it."""
    seen: dict[str, Any] = {"uid": os.geteuid()}
    for name, endpoint in (("frontend", frontend), ("backend", backend)):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(ipc_path(endpoint)))
            seen[name] = "connected"
        except OSError as exc:
            seen[name] = errno.errorcode.get(exc.errno, str(exc.errno))
        finally:
            probe.close()
    context = zmq.Context()
    try:
        with BrokerClient(frontend, context=context, connect_wait=1.0) as client:
            seen["status"] = sorted(client.status(timeout=2.0)["models"])
    except BrokerUnavailable:
        seen["status"] = "unavailable"
    finally:
        context.destroy(linger=0)
    return seen


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_another_local_user_cannot_reach_the_default_sockets(private_stack):
    broker, _, runtime = private_stack
    private = runtime / "intgrads"
    probe = lambda: reach(broker.frontend, broker.backend)  # noqa: E731
    private.chmod(0o755)  # the control: the directory opened up, nothing else changed
    try:
        opened = as_nobody(probe)
    finally:
        private.chmod(0o700)
    closed = as_nobody(probe)
    print(f"\n[private sockets] as uid {NOBODY}: directory 0755 -> {opened}; 0700 -> {closed}")
    assert opened == {"uid": NOBODY, "frontend": "connected", "backend": "connected", "status": ["tiny"]}
    assert closed == {"uid": NOBODY, "frontend": "EACCES", "backend": "EACCES", "status": "unavailable"}


def test_a_worker_describing_the_model_differently_is_refused_and_models_is_unchanged(private_stack, tiny_bert_dir):
    broker, http, _ = private_stack
    before = json.loads(http.get("/models")[2])
    # `intgrads-broker worker --model ... --name tiny --max-steps 7`: no --connect, the default is the
    # broker's private backend; other limits than the serving worker's
    rogue = start_remote_worker(None, ["--model", str(tiny_bert_dir), *MODEL, "--max-steps", "7"],
                                folder=broker.log.parent, env=broker.env)
    try:
        assert rogue.process.wait(timeout=120) == 0  # told to stop: it drained and exited
    finally:
        if rogue.process.poll() is None:
            rogue.stop()
    assert json.loads(http.get("/models")[2]) == before
    assert "refused worker" in broker.log_text() and "limits.max_steps 7 instead of 300" in broker.log_text()
    assert [w["model"] for w in broker.status()["workers"]] == ["tiny"]
    assert broker.status()["counters"]["workers_refused"] == 1
    assert http.post("/model/?format=json", REQUEST)[0] == 200


# CURVE required on loopback TCP ---------------------------------------------------------

@pytest.fixture(scope="module")
def curve_stack(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("curve-loopback")
    keys = folder / "keys"
    make_keys(keys, workers=1, frontends=1)
    frontend, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = start_broker(["--model", str(tiny_bert_dir), *MODEL], workers=1, folder=folder,
                          frontend=frontend, backend=backend, extra_args=["--keys", str(keys), "--curve-on-loopback"])
    broker.curve = CurveClient(keys / "frontend0.key_secret", keys / "broker.key")
    http = None
    try:
        broker.wait_ready()  # its own worker joined over loopback TCP with the local worker key
        http = start_frontend(frontend, folder=folder, env={"INTGRADS_SERVER_KEY": str(keys / "broker.key"),
                                                            "INTGRADS_CLIENT_KEY": str(keys / "frontend0.key_secret")})
        yield broker, http, keys
    finally:
        if http is not None:
            http.stop()
        broker.stop()


def test_with_curve_on_loopback_a_keyed_gunicorn_serves_and_plain_peers_get_nowhere(curve_stack):
    broker, http, keys = curve_stack
    code, _, body = http.post("/model/?format=json", REQUEST)
    assert code == 200, body[:300]
    assert "(CURVE)" in broker.log_text().split("broker listening:", 1)[1].split("workers on", 1)[0]
    refused = broker.status()["counters"].get("handshakes_refused", 0)
    context = zmq.Context()
    try:
        with BrokerClient(broker.frontend, context=context, connect_wait=1.0) as plain:  # the frontend port
            with pytest.raises(BrokerUnavailable):
                plain.status(timeout=1.0)
        worker = context.socket(zmq.DEALER)  # the worker port, as the intruder did
        worker.setsockopt(zmq.LINGER, 0)
        worker.setsockopt(zmq.SNDTIMEO, 1000)
        worker.connect(broker.backend)
        try:
            worker.send_multipart(p.envelope(p.WORKER, p.Command.READY) + [p.WorkerInfo("tiny").to_json()])
        except zmq.Again:
            pass  # no handshake, so nothing could even be queued
        wait_until(lambda: broker.status()["counters"].get("handshakes_refused", 0) >= refused + 2, 10,
                   "both plain peers to be refused")
    finally:
        context.destroy(linger=0)
    assert [w["model"] for w in broker.status()["workers"]] == ["tiny"] and len(broker.status()["workers"]) == 1
    log = broker.log_text()
    assert "refused a client connection" in log and "refused a worker connection" in log


def test_with_curve_on_loopback_a_gunicorn_without_the_key_is_refused(curve_stack, tmp_path):
    broker, _, keys = curve_stack
    keyless = start_frontend(broker.frontend, folder=tmp_path)  # no INTGRADS_*_KEY: a plain connection
    try:
        assert keyless.get("/readyz")[0] == 503
        code, _, body = keyless.post("/model/?format=json", REQUEST)
        assert code == 503 and json.loads(body)["code"] == "broker_unavailable"
    finally:
        keyless.stop()
    worker_key = start_frontend(broker.frontend, folder=tmp_path, env={  # a worker's key opens no frontend port
        "INTGRADS_SERVER_KEY": str(keys / "broker.key"), "INTGRADS_CLIENT_KEY": str(keys / "worker0.key_secret")})
    try:
        assert worker_key.post("/model/?format=json", REQUEST)[0] == 503
    finally:
        worker_key.stop()
    strict = start_frontend(broker.frontend, folder=tmp_path, env={"INTGRADS_REQUIRE_CURVE": "1"}, wait=False)
    assert strict.process.wait(timeout=60) != 0  # refuses to start rather than send texts in the clear
    assert "INTGRADS_REQUIRE_CURVE is set" in strict.log.read_text(errors="replace")
