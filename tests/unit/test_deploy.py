"""deploy/ checked offline: the Kubernetes manifests, the compose file and the
Dockerfile agree with the schemas, with each other and with the code.

Nothing here needs a cluster or a Docker daemon: YAML is parsed, ``kubectl
kustomize`` (when installed) renders the manifests, kubernetes-validate checks
every object against the schema of a recent Kubernetes release, and every
command line is parsed by the package's own click CLI. deploy/k8s/secrets.sh
runs with ``kubectl --dry-run=client``; each pod's keys folder is rebuilt from
the Secrets it renders, and a real in-process broker on those files proves
that each pod's key opens its own port and not the other one.
"""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is in the test extras")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
IMAGE = "intgrads-zmq"


def endpoint_port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def raw_objects() -> list[dict[str, Any]]:
    """Every object of the files the kustomization lists, plus its generated ConfigMaps."""
    spec = kustomization()
    objects = [doc for name in spec["resources"] for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    for generator in spec.get("configMapGenerator", []):
        data = dict(literal.split("=", 1) for literal in generator.get("literals", []))
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                        "data": data})
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def containers(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(deployment, container) for every container and init container."""
    return [(d, c) for d in by_kind(objects, "Deployment").values()
            for c in pod_spec(d).get("initContainers", []) + pod_spec(d)["containers"]]


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    env = {}
    maps = by_kind(objects, "ConfigMap")
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def docker_entrypoint() -> list[str]:
    return yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", dockerfile(), re.M).group(1))


# the CLI ---------------------------------------------------------------------

def parse_cli(argv: list[str], files: dict[str, Path]) -> Any:
    """Parse ``intgrads-broker ...`` as the installed command would; ``files`` maps
    paths mounted in the container to stand-ins here (click checks they exist).
    Returns the subcommand's context: its params are the parsed options."""
    from intgrads_zmq.cli import main

    args = [str(files.get(a, a)) for a in argv]
    assert args[0] == "intgrads-broker", argv
    at = next(i for i, a in enumerate(args) if a in main.commands)
    parent = main.make_context("intgrads-broker", args[1:at + 1])  # the group's own options, if any
    return main.commands[args[at]].make_context(args[at], args[at + 1:], parent=parent)


def stand_ins(argv: list[str], tmp_path: Path) -> dict[str, Path]:
    files = {}
    for arg in argv:
        if arg.startswith(("/keys/", "/models/")):
            files[arg] = tmp_path / arg.lstrip("/")
            files[arg].parent.mkdir(parents=True, exist_ok=True)
        if arg.startswith("/keys/"):
            files[arg].write_text("")
        elif arg.startswith("/models/"):
            files[arg].mkdir(exist_ok=True)
    return files


def expand_k8s(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


def expand_compose(value: Any) -> str:
    """Compose's ${VAR:-default}, with every variable unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


# tests -----------------------------------------------------------------------

def test_every_yaml_file_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert K8S / "kustomization.yaml" in files and DEPLOY / "compose.yaml" in files
    for path in files:
        assert [doc for doc in yaml.safe_load_all(path.read_text()) if doc], path


def test_kustomize_renders_every_listed_object():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: 'kubectl kustomize deploy/k8s' not run")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    expected = raw_objects()
    assert sorted(o["kind"] for o in rendered) == sorted(o["kind"] for o in expected)
    images = {c["image"] for _, c in containers(rendered)}
    tag = kustomization()["images"][0]["newTag"]
    assert images == {f"{IMAGE}:{tag}"}
    # The generated ConfigMap gets a hashed name and every reference follows it.
    (config_map,) = [o["metadata"]["name"] for o in rendered if o["kind"] == "ConfigMap"]
    refs = {s["configMapRef"]["name"] for _, c in containers(rendered) for s in c.get("envFrom", [])}
    assert refs == {config_map} and config_map.startswith("intgrads-model-")


def test_every_object_validates_against_a_recent_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extras")
    version = kv.latest_version()
    for obj in raw_objects():
        kv.validate(obj, version, strict=True)  # raises ValidationError naming the field


def test_selectors_services_and_budgets_find_their_pods():
    objects = raw_objects()
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == {"intgrads-broker", "intgrads-frontend", "intgrads-worker"}
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name

    def selected(selector: dict[str, str]) -> list[str]:
        return [n for n, d in deployments.items()
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]

    targets = {}
    for name, service in by_kind(objects, "Service").items():
        (target,) = selected(service["spec"]["selector"])
        targets[name] = target
        ports = {p["name"] for c in pod_spec(deployments[target])["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name
    assert targets == {"intgrads-workers": "intgrads-broker", "intgrads-broker": "intgrads-broker",
                       "intgrads-http": "intgrads-frontend"}
    budgets = {name: selected(b["spec"]["selector"]["matchLabels"])
               for name, b in by_kind(objects, "PodDisruptionBudget").items()}
    assert budgets == {"intgrads-worker": ["intgrads-worker"], "intgrads-frontend": ["intgrads-frontend"]}
    assert deployments["intgrads-broker"]["spec"]["replicas"] == 1  # one broker is one pool
    assert deployments["intgrads-broker"]["spec"]["strategy"]["type"] == "Recreate"
    assert deployments["intgrads-frontend"]["spec"]["replicas"] >= 2  # a rolling update keeps one serving


def test_every_container_has_requests_within_its_limits():
    from intgrads_zmq.sizes import parse_bytes

    def cpu(text: str) -> float:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)

    def memory(text: str) -> int:
        return parse_bytes(text + "B" if text.endswith("i") else text)

    for deployment, container in containers(raw_objects()):
        resources = container["resources"]
        assert cpu(resources["requests"]["cpu"]) <= cpu(resources["limits"]["cpu"]), container["name"]
        assert memory(resources["requests"]["memory"]) <= memory(resources["limits"]["memory"]), container["name"]
        assert container["image"] == IMAGE, container["name"]
        security = {**pod_spec(deployment).get("securityContext", {}), **container.get("securityContext", {})}
        assert security["runAsNonRoot"] and security["runAsUser"] != 0, container["name"]


def test_ports_and_endpoints_agree_with_the_codes_defaults_and_rules():
    from intgrads_zmq.service.endpoints import TCP_CLIENT_ENDPOINT, TCP_WORKER_ENDPOINT
    from intgrads_zmq.service.security import curve_needed

    objects = raw_objects()
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    (broker,) = pod_spec(deployments["intgrads-broker"])["containers"]
    (frontend,) = pod_spec(deployments["intgrads-frontend"])["containers"]
    (worker,) = pod_spec(deployments["intgrads-worker"])["containers"]
    frontend_env = container_env(objects, frontend)
    # Both broker ports leave the pod, on the ports the code uses for TCP, so both need CURVE (--keys).
    frontend_port = endpoint_port(option(broker["args"], "--frontend"))
    backend_port = endpoint_port(option(broker["args"], "--backend"))
    assert (frontend_port, backend_port) == (endpoint_port(TCP_CLIENT_ENDPOINT), endpoint_port(TCP_WORKER_ENDPOINT))
    assert curve_needed(option(broker["args"], "--frontend")) and curve_needed(option(broker["args"], "--backend"))
    assert "--keys" in broker["args"]
    assert {p["name"]: p["containerPort"] for p in broker["ports"]} == {"frontends": frontend_port,
                                                                        "workers": backend_port}
    assert [p["port"] for p in services["intgrads-broker"]["spec"]["ports"]] == [frontend_port]
    assert [p["port"] for p in services["intgrads-workers"]["spec"]["ports"]] == [backend_port]
    assert option(worker["args"], "--connect") == f"tcp://intgrads-workers:{backend_port}"
    # gunicorn reaches the broker's Service with a frontend key pair, which the settings demand there.
    assert frontend_env["INTGRADS_BROKER"] == f"tcp://intgrads-broker:{frontend_port}"
    assert curve_needed(frontend_env["INTGRADS_BROKER"])
    mounts = {m["mountPath"] for m in frontend["volumeMounts"]}
    for name in ("INTGRADS_SERVER_KEY", "INTGRADS_CLIENT_KEY"):
        assert str(Path(frontend_env[name]).parent) in mounts, name
    # HTTP: the port gunicorn's settings default to, everywhere.
    http_port = int(runpy.run_path(str(REPO / "frontend" / "gunicorn.conf.py"))["bind"].rsplit(":", 1)[1])
    assert frontend_env["INTGRADS_BIND"] == f"0.0.0.0:{http_port}"
    assert {p["name"]: p["containerPort"] for p in frontend["ports"]} == {"http": http_port}
    (http,) = services["intgrads-http"]["spec"]["ports"]
    assert http["port"] == http_port
    annotations = deployments["intgrads-frontend"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(http_port) and annotations["prometheus.io/scrape"] == "true"
    assert all(s["spec"]["type"] == "ClusterIP" for s in services.values())


def test_probes_and_metrics_point_at_routes_the_app_serves():
    from frontend.falcon_app import create_app
    from frontend.settings import FrontendSettings

    app = create_app(FrontendSettings(broker="inproc://never"))  # opens no socket
    deployment = by_kind(raw_objects(), "Deployment")["intgrads-frontend"]
    (frontend,) = pod_spec(deployment)["containers"]
    paths = {frontend["readinessProbe"]["httpGet"]["path"], frontend["livenessProbe"]["httpGet"]["path"],
             deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]}
    assert paths == {"/readyz", "/healthz", "/metrics"}
    assert frontend["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert frontend["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for path in paths:
        found = app._router.find(path)
        assert found is not None and hasattr(found[0], "on_get"), path


def test_kubernetes_commands_are_accepted_by_the_installed_cli(tmp_path):
    objects = raw_objects()
    parsed = {}
    for _, container in containers(objects):
        argv = [*(container.get("command") or docker_entrypoint()), *container.get("args", [])]
        argv = [expand_k8s(a, container_env(objects, container)) for a in argv]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        if argv[0] == "intgrads-broker":
            assert all(Path(a).parent.as_posix() in mounts for a in argv if a.startswith("/keys/")), argv
            parsed[container["name"]] = parse_cli(argv, stand_ins(argv, tmp_path))
        else:
            assert argv == ["gunicorn", "frontend:app"] and container["name"] == "frontend"
        for kind in ("readinessProbe", "livenessProbe"):
            probe = container.get(kind, {}).get("exec")
            if probe:
                command = probe["command"]
                assert all(a in mounts or Path(a).parent.as_posix() in mounts for a in command if a.startswith("/keys"))
                parsed[f"{container['name']} {kind}"] = parse_cli(command, stand_ins(command, tmp_path))
    assert set(parsed) == {"broker", "worker", "broker readinessProbe", "broker livenessProbe"}
    broker = parsed["broker"].params
    for kind in ("readinessProbe", "livenessProbe"):  # the broker asks itself, with its own key pair
        probe = parsed[f"broker {kind}"].params
        assert probe["frontend"] == "tcp://127.0.0.1:" + broker["frontend"].rsplit(":", 1)[1]
        assert (Path(probe["server_key"]).name, Path(probe["client_key"]).name) == ("broker.key",
                                                                                     "broker.key_secret")
    worker = parsed["worker"].params
    assert worker["cuda"] is True and worker["model_dir"].endswith("/models/model") and worker["name"] == "model"
    assert broker["name"] == worker["name"] and broker["workers"] == 0 and broker["keys"] == "/keys"


def test_the_worker_asks_for_as_many_gpus_as_it_uses_and_mounts_what_it_reads():
    deployment = by_kind(raw_objects(), "Deployment")["intgrads-worker"]
    (worker,) = pod_spec(deployment)["containers"]
    gpus = int(option(worker["args"], "--num-cuda-devs"))
    resources = worker["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == gpus
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in worker["volumeMounts"]}
    assert option(worker["args"], "--model").startswith("/models/") and mounts["/models"]["persistentVolumeClaim"]
    secret_items = {f"/keys/{item['path']}" for item in mounts["/keys"]["secret"]["items"]}
    assert {option(worker["args"], "--server-key"), option(worker["args"], "--client-key")} == secret_items
    # The broker's Secret is its keys folder: its pair, and the public keys it accepts, each
    # in the folder of its kind (authorized/ for workers, frontends/ for frontends).
    broker_pod = pod_spec(by_kind(raw_objects(), "Deployment")["intgrads-broker"])
    (secret,) = [v["secret"] for v in broker_pod["volumes"] if "secret" in v]
    provided = {item["path"] for item in secret["items"]}
    assert provided == {"broker.key", "broker.key_secret", "authorized/worker.key", "frontends/frontend.key"}
    (keys_mount,) = [m for m in broker_pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/keys"]
    assert keys_mount["readOnly"] is True
    assert secret["secretName"] != mounts["/keys"]["secret"]["secretName"]  # workers never get the broker's secret


def test_compose_commands_are_accepted_by_the_installed_cli(tmp_path):
    from intgrads_zmq.service.security import curve_needed

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"broker", "frontend", "worker", "worker-gpu"}
    parsed = {}
    for name, service in services.items():
        entrypoint = service.get("entrypoint") or docker_entrypoint()
        argv = [expand_compose(a) for a in [*entrypoint, *service["command"]]]
        if argv[0] == "gunicorn":
            assert argv[1:] == ["frontend:app"] and "network_mode" not in service  # a container of its own
            continue
        parsed[name] = parse_cli(argv, stand_ins(argv, tmp_path))
    assert parsed["worker"].params["cuda"] is False and parsed["worker-gpu"].params["cuda"] is True
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert int(expand_compose(devices["count"])) == parsed["worker-gpu"].params["num_cuda_devs"]
    broker = parsed["broker"].params
    assert option(services["worker"]["command"], "--connect") == "tcp://broker:" + broker["backend"].rsplit(":", 1)[1]
    environment = services["frontend"]["environment"]
    assert environment["INTGRADS_BROKER"] == "tcp://broker:" + broker["frontend"].rsplit(":", 1)[1]
    assert curve_needed(broker["frontend"]) and curve_needed(environment["INTGRADS_BROKER"]) and broker["keys"]
    mounted = {target: source for source, target, *_ in (v.split(":") for v in services["frontend"]["volumes"])}
    assert mounted[environment["INTGRADS_SERVER_KEY"]] == "./keys/broker.key"
    assert mounted[environment["INTGRADS_CLIENT_KEY"]] == "./keys/frontend0.key_secret"
    assert services["frontend"]["ports"] == ["127.0.0.1:${HTTP_PORT:-8888}:8888"] and "ports" not in services["broker"]
    assert all(s["image"].startswith(f"{IMAGE}:") for s in services.values())


def test_the_dockerfile_installs_as_the_makefile_does():
    makefile = (REPO / "Makefile").read_text()
    pinned = re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, re.M).group(1)
    text = dockerfile()
    assert re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M).group(1) == pinned
    torch_step = text.index('pip install "torch==${TORCH_VERSION}"')
    package_step = text.index("pip install .")
    assert torch_step < package_step  # the pinned torch first, as in the Makefile
    assert makefile.index('pip install --quiet "torch==$(TORCH_VERSION)"') < makefile.index("pip install --quiet -e")
    assert "[demo" not in text  # the demo extra would bake a model into the image
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    setup = (REPO / "setup.py").read_text()
    assert f'"{docker_entrypoint()[0]}=' in setup  # a console script the package installs
    assert '"gunicorn' in setup


def mounted_secrets() -> dict[str, set[str]]:
    """Secret name -> the keys the manifests mount from it."""
    mounted: dict[str, set[str]] = {}
    for obj in raw_objects():
        if obj.get("kind") != "Deployment":
            continue
        for volume in pod_spec(obj).get("volumes", []):
            secret = volume.get("secret")
            if secret:
                mounted.setdefault(secret["secretName"], set()).update(i["key"] for i in secret["items"])
    return mounted


def test_the_readme_secret_commands_make_what_the_manifests_mount():
    """README creates the Secrets with deploy/k8s/secrets.sh (tested below), or
    with `kubectl create secret` lines that create every key a manifest mounts."""
    readme = (REPO / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    made: dict[str, set[str]] = {}
    for name, args in re.findall(r"kubectl create secret generic (\S+)((?: +--from-file=\S+)+)", readme):
        for key, source in re.findall(r"--from-file=([^=\s]+)=(\S+)", args):
            made.setdefault(name, set()).add(key)
            assert re.fullmatch(r"keys/(broker|worker\d+|frontend\d+)\.key(_secret)?", source), source
    if made:
        assert made == mounted_secrets()
    else:
        assert re.search(r"^deploy/k8s/secrets\.sh keys$", readme, re.M), "README never creates the Secrets"


def rendered_secrets(keys: Path) -> dict[str, dict[str, bytes]]:
    """What deploy/k8s/secrets.sh creates from ``keys``, rendered by kubectl offline."""
    import base64
    import json

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: deploy/k8s/secrets.sh not run")
    out = subprocess.run(["sh", str(K8S / "secrets.sh"), str(keys), "--dry-run=client", "-o", "json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    decoder, text, objects = json.JSONDecoder(), out.stdout.strip(), []
    while text:
        obj, end = decoder.raw_decode(text)
        objects.append(obj)
        text = text[end:].strip()
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extras")
    for obj in objects:
        obj["metadata"].pop("creationTimestamp", None)
        kv.validate(obj, kv.latest_version(), strict=True)
    return {o["metadata"]["name"]: {k: base64.b64decode(v) for k, v in o["data"].items()} for o in objects}


def test_the_secrets_script_gives_each_pod_keys_that_open_its_port_and_no_other(tmp_path):
    """deploy/k8s/secrets.sh run on a folder from `intgrads-broker keys`; each pod's
    /keys rebuilt from its Secret and its volume items; then a real broker on
    those files (CURVE on both ports, as in the cluster) takes the frontend pod's
    key on the frontend port and the worker pod's key on the worker port, and
    neither on the other's."""
    import zmq

    from frontend.settings import FrontendSettings
    from intgrads_zmq.errors import BrokerUnavailable
    from intgrads_zmq.service import protocol as p
    from intgrads_zmq.service.broker import Broker, BrokerSettings
    from intgrads_zmq.service.broker_client import BrokerClient
    from intgrads_zmq.service.security import CurveClient, CurveServer, make_keys
    from intgrads_zmq.testing.stack import wait_until

    keys = tmp_path / "keys"
    make_keys(keys)  # what `intgrads-broker keys --dir keys` makes (one worker, one frontend)
    secrets = rendered_secrets(keys)
    assert {name: set(data) for name, data in secrets.items()} == mounted_secrets()
    pods = {}
    for name, deployment in by_kind(raw_objects(), "Deployment").items():
        root = tmp_path / name
        for volume in pod_spec(deployment)["volumes"]:
            if "secret" not in volume:
                continue
            (mount,) = [m["mountPath"] for c in pod_spec(deployment)["containers"] for m in c["volumeMounts"]
                        if m["name"] == volume["name"]]
            for item in volume["secret"]["items"]:
                target = root / mount.lstrip("/") / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(secrets[volume["secret"]["secretName"]][item["key"]])
        pods[name] = root
    assert not list(pods["intgrads-worker"].rglob("broker.key_secret"))
    assert not list(pods["intgrads-frontend"].rglob("broker.key_secret"))

    objects = raw_objects()
    (frontend,) = pod_spec(by_kind(objects, "Deployment")["intgrads-frontend"])["containers"]
    env = container_env(objects, frontend)
    frontend_pair = CurveClient(pods["intgrads-frontend"] / env["INTGRADS_CLIENT_KEY"].lstrip("/"),
                                pods["intgrads-frontend"] / env["INTGRADS_SERVER_KEY"].lstrip("/"))
    (worker,) = pod_spec(by_kind(objects, "Deployment")["intgrads-worker"])["containers"]
    worker_pair = CurveClient(pods["intgrads-worker"] / option(worker["args"], "--client-key").lstrip("/"),
                              pods["intgrads-worker"] / option(worker["args"], "--server-key").lstrip("/"))
    FrontendSettings(broker=env["INTGRADS_BROKER"], curve=frontend_pair).check_broker_link()

    context, peers = zmq.Context(), zmq.Context()
    curve = CurveServer.from_dir(pods["intgrads-broker"] / "keys", everywhere=True)  # loopback here, 0.0.0.0 there
    broker = Broker(BrokerSettings(frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*", curve=curve), context)
    broker.bind()
    front, back = (s.getsockopt(zmq.LAST_ENDPOINT).decode() for s in (broker.frontend, broker.backend))
    loop = threading.Thread(target=broker.run, daemon=True)
    loop.start()

    joined = []

    def join(pair: CurveClient, model: str) -> None:
        sock = peers.socket(zmq.DEALER)
        joined.append(sock)  # kept open until the end
        sock.setsockopt(zmq.LINGER, 0)
        pair.apply(sock)
        sock.connect(back)
        if sock.poll(2000, zmq.POLLOUT):
            sock.send_multipart(p.envelope(p.WORKER, p.Command.READY) + [p.WorkerInfo(model).to_json()])

    try:
        with BrokerClient(front, context=peers, curve=frontend_pair) as client:
            assert client.status()["models"] == {}
            join(worker_pair, "model")
            join(frontend_pair, "intruder")
            wait_until(lambda: "model" in client.status()["models"], 5, "the worker pod's key to register")
            assert list(client.status()["models"]) == ["model"]
        with BrokerClient(front, context=peers, curve=worker_pair, connect_wait=0.5) as client:
            with pytest.raises(BrokerUnavailable):
                client.status(timeout=0.5)
    finally:
        broker.request_stop()
        loop.join(timeout=10)
        peers.destroy(linger=0)
        context.destroy(linger=0)
