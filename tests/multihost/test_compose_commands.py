"""deploy/compose.yaml's services run as written, on namespace hosts.

No Docker daemon here, so the containers are played by namespaces: the broker
and the frontend share the front host's network (compose's ``network_mode:
service:broker``), each worker gets a host of its own and reaches the broker by
address instead of by the service name ``broker``. Command lines, environment
and the files mounted (keys, models) are taken from the compose file; only the
executables' paths (this checkout's venv) and the mounts' sources differ.
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


def mounts_of(service: dict[str, Any], variables: dict[str, str], deploy_dir: Path) -> dict[str, Path]:
    found = {}
    for volume in service.get("volumes", []):
        source, target = expand(volume, variables).split(":")[:2]
        found[target] = (deploy_dir / source).resolve()
    return found


@pytest.fixture
def lab():
    with Lab(gpu_hosts=2) as made:
        yield made


def test_the_compose_services_serve_as_written(lab, tiny_bert_dir, tmp_path):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    deploy_dir = tmp_path / "deploy"  # plays the compose file's folder: ./keys and ./models
    make_keys(deploy_dir / "keys", 1)
    (deploy_dir / "models").mkdir()
    os.symlink(tiny_bert_dir, deploy_dir / "models" / "tiny-bert")
    variables = {"MODEL_DIR": "tiny-bert", "MODEL_NAME": MODEL_NAME}
    replicas = int(expand(services["worker"]["deploy"]["replicas"], variables))
    assert replicas == len(lab.gpus)

    def start(name: str, host: Host, log: str) -> None:
        service = services[name]
        argv = local_argv(service, variables, mounts_of(service, variables, deploy_dir))
        if host is not lab.front:  # the compose network's name for the broker, as this host reaches it
            argv = [a.replace("tcp://broker:", f"tcp://{host.front_address}:") for a in argv]
        env = {k: expand(v, variables) for k, v in service.get("environment", {}).items()}
        lab.popen(host, argv, log=tmp_path / log, env=env)

    start("broker", lab.front, "broker.log")
    start("frontend", lab.front, "frontend.log")  # network_mode: service:broker
    for index, host in enumerate(lab.gpus):
        start("worker", host, f"worker{index}.log")

    def get(path: str) -> tuple[int, bytes]:
        try:
            code, _, body = lab.call_in(lab.front, http, "GET", f"http://127.0.0.1:{HTTP_PORT}{path}", timeout=5)
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
    code, _, body = lab.call_in(lab.front, http, "POST", f"http://127.0.0.1:{HTTP_PORT}/model/?format=json",
                                data=json.dumps({"sequence": TEXTS[0], "n_steps": 4}).encode(),
                                headers={"Content-Type": "application/json"}, timeout=60)
    metrics = get("/metrics")
    print(f"\n[multihost] compose services on namespace hosts: /readyz {state}; POST /model/ {code}")
    assert state["workers"] == {MODEL_NAME: replicas}
    assert code == 200 and json.loads(body)["model"] == MODEL_NAME  # the broker's --name is the default model
    assert metrics[0] == 200 and metrics[1]
