"""deploy/compose.yaml's services run as written, on namespace hosts.

No Docker daemon here, so the containers are played by namespaces: the broker
on the front host, the HTTP frontend on a host of its own (it reaches the
broker's CURVE frontend port across a link, with its frontend key pair, as
the frontend container does on the compose network), and each worker on a
host of its own; they reach the broker by address instead of by the service
name ``broker``. Command lines, environment and the files mounted (keys,
models) are taken from the compose file; only the executables' paths (this
checkout's venv) and the mounts' sources differ. A second gunicorn on the
frontend's host, without the key pair, is refused by the broker.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from intgrads_zmq.testing.netns import Host, Lab
from intgrads_zmq.testing.stack import PYTHON, http, wait_until
from tests.multihost.conftest import TEXTS, make_keys

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ENTRYPOINT = "intgrads-broker"  # deploy/Dockerfile's
HTTP_PORT = 8888
MODEL_NAME = "sentiment"


def expand(value: Any, variables: dict[str, str]) -> str:
    """Compose's ${VAR:-default}."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: variables.get(m.group(1), m.group(2)), str(value))


def local_argv(service: dict[str, Any], variables: dict[str, str], mounts: dict[str, Path]) -> list[str]:
    """The service's command line with this checkout's executables and the mounts' sources."""
    entrypoint = service.get("entrypoint") or [ENTRYPOINT]
    argv = [expand(a, variables) for a in [*entrypoint, *service["command"]]]
    executable = {ENTRYPOINT: [PYTHON, "-m", "intgrads_zmq.cli"],
                  "gunicorn": [str(Path(PYTHON).parent / "gunicorn")]}[argv[0]]
    out = []
    for arg in argv[1:]:
        for target, source in mounts.items():
            if arg == target or arg.startswith(target + "/"):
                arg = str(source) + arg[len(target):]
        out.append(arg)
    return executable + out


def env_of(service: dict[str, Any], variables: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    """The service's environment, with paths inside mounts mapped to their sources."""
    env = {}
    for name, value in service.get("environment", {}).items():
        value = expand(value, variables)
        env[name] = str(mounts[value]) if value in mounts else value
    return env


def mounts_of(service: dict[str, Any], variables: dict[str, str], deploy_dir: Path) -> dict[str, Path]:
    found = {}
    for volume in service.get("volumes", []):
        source, target = expand(volume, variables).split(":")[:2]
        found[target] = (deploy_dir / source).resolve()
    return found


@pytest.fixture
def lab():
    with Lab(gpu_hosts=3) as made:  # gpu1: the frontend's host; gpu2, gpu3: a worker each
        yield made


def test_the_compose_services_serve_as_written(lab, tiny_bert_dir, tmp_path):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    deploy_dir = tmp_path / "deploy"  # plays the compose file's folder: ./keys and ./models
    make_keys(deploy_dir / "keys", 1)
    (deploy_dir / "models").mkdir()
    os.symlink(tiny_bert_dir, deploy_dir / "models" / "tiny-bert")
    variables = {"MODEL_DIR": "tiny-bert", "MODEL_NAME": MODEL_NAME}
    http_host, *worker_hosts = lab.gpus
    replicas = int(expand(services["worker"]["deploy"]["replicas"], variables))
    assert replicas == len(worker_hosts)

    def start(name: str, host: Host, log: str, env: dict[str, str] | None = None) -> None:
        service = services[name]
        mounts = mounts_of(service, variables, deploy_dir)
        argv = local_argv(service, variables, mounts)
        service_env = {**env_of(service, variables, mounts), **(env or {})}
        if host is not lab.front:  # the compose network's name for the broker, as this host reaches it
            argv = [a.replace("tcp://broker:", f"tcp://{host.front_address}:") for a in argv]
            service_env = {k: v.replace("tcp://broker:", f"tcp://{host.front_address}:")
                           for k, v in service_env.items()}
        lab.popen(host, argv, log=tmp_path / log, env=service_env)

    start("broker", lab.front, "broker.log")
    start("frontend", http_host, "frontend.log")
    for index, host in enumerate(worker_hosts):
        start("worker", host, f"worker{index}.log")

    def get(path: str, port: int = HTTP_PORT) -> tuple[int, bytes]:
        try:
            code, _, body = lab.call_in(http_host, http, "GET", f"http://127.0.0.1:{port}{path}", timeout=5)
        except OSError:
            return 0, b""
        return code, body

    def ready() -> dict[str, Any] | None:
        code, body = get("/readyz")
        state = json.loads(body) if code == 200 else {}
        return state if state.get("workers", {}).get(MODEL_NAME) == replicas else None

    try:
        state = wait_until(ready, 120, "/readyz to report every worker")
    except TimeoutError:
        logs = {p.name: p.read_text(errors="replace")[-1500:] for p in tmp_path.glob("*.log")}
        raise AssertionError(f"the compose services did not become ready: {logs}") from None
    code, _, body = lab.call_in(http_host, http, "POST", f"http://127.0.0.1:{HTTP_PORT}/model/?format=json",
                                data=json.dumps({"sequence": TEXTS[0], "n_steps": 4}).encode(),
                                headers={"Content-Type": "application/json"}, timeout=60)
    metrics = get("/metrics")
    # Next to it, the same frontend without its key pair refuses to start (the settings demand one
    # for a broker beyond loopback), and one with a key pair nobody authorised is refused by the broker.
    keyless_log = start_other_frontend(start, http_host, tmp_path, "keyless", HTTP_PORT + 1,
                                       {"INTGRADS_SERVER_KEY": "", "INTGRADS_CLIENT_KEY": ""})
    stranger_keys = tmp_path / "stranger"
    make_keys(stranger_keys, 0)
    start_other_frontend(start, http_host, tmp_path, "stranger", HTTP_PORT + 2, {
        "INTGRADS_SERVER_KEY": str(deploy_dir / "keys" / "broker.key"),
        "INTGRADS_CLIENT_KEY": str(stranger_keys / "frontend0.key_secret")})
    wait_until(lambda: get("/healthz", HTTP_PORT + 2)[0] == 200, 60, "the frontend with a stranger's key to start")
    stranger = get("/readyz", HTTP_PORT + 2)[0], lab.call_in(
        http_host, http, "POST", f"http://127.0.0.1:{HTTP_PORT + 2}/model/?format=json",
        data=json.dumps({"sequence": TEXTS[0], "n_steps": 4}).encode(),
        headers={"Content-Type": "application/json"}, timeout=60)[0]
    broker_log = (tmp_path / "broker.log").read_text(errors="replace")
    print(f"\n[multihost] compose services on namespace hosts (the frontend on a host of its own, CURVE to "
          f"the broker): /readyz {state}; POST /model/ {code}; a frontend without keys refused to start; one "
          f"with an unauthorised key: /readyz and POST {stranger}")
    assert state["workers"] == {MODEL_NAME: replicas}
    assert code == 200 and json.loads(body)["model"] == MODEL_NAME  # the broker's --name is the default model
    assert metrics[0] == 200 and metrics[1]
    assert "broker listening: frontends on tcp://0.0.0.0:5555 (CURVE)" in broker_log
    wait_until(lambda: "Worker failed to boot" in keyless_log.read_text(errors="replace"), 60,
               "the frontend without keys to give up")
    assert "leaves this host" in keyless_log.read_text(errors="replace")
    assert stranger == (503, 503)
    assert "refused a client connection" in broker_log and "CURVE key refused" in broker_log


def start_other_frontend(start: Any, host: Host, folder: Path, name: str, port: int, env: dict[str, str]) -> Path:
    """The compose file's frontend again on ``port``, with ``env`` changed; returns its log."""
    start("frontend", host, f"{name}.log", env={**env, "INTGRADS_BIND": f"0.0.0.0:{port}"})
    return folder / f"{name}.log"
