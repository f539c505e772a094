"""deploy/ checked offline: the Kubernetes manifests, the compose file and the
Dockerfile agree with the schemas, with each other and with the code.

Nothing here needs a cluster or a Docker daemon: YAML is parsed, ``kubectl
kustomize`` (when installed) renders the manifests, kubernetes-validate checks
every object against the schema of a recent Kubernetes release, and every
command line is parsed by the package's own click CLI.
"""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
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
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [d for d in deployments.values()
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]

    for name, service in by_kind(objects, "Service").items():
        (target,) = selected(service["spec"]["selector"])
        ports = {p["name"] for c in pod_spec(target)["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name
    for name, budget in by_kind(objects, "PodDisruptionBudget").items():
        assert selected(budget["spec"]["selector"]["matchLabels"]) == [deployments["intgrads-worker"]], name
    assert deployments["intgrads-broker"]["spec"]["replicas"] == 1  # one broker is one pool
    assert deployments["intgrads-broker"]["spec"]["strategy"]["type"] == "Recreate"


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
    from intgrads_zmq.service.endpoints import (
        DEFAULT_CLIENT_ENDPOINT,
        DEFAULT_WORKER_ENDPOINT,
        is_local_endpoint,
    )

    objects = raw_objects()
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    broker, frontend = pod_spec(deployments["intgrads-broker"])["containers"]
    (worker,) = pod_spec(deployments["intgrads-worker"])["containers"]
    frontend_env = container_env(objects, frontend)
    # The broker refuses a frontend endpoint that leaves the host: gunicorn shares its pod.
    assert option(broker["args"], "--frontend") == DEFAULT_CLIENT_ENDPOINT == frontend_env["INTGRADS_BROKER"]
    assert is_local_endpoint(option(broker["args"], "--frontend"))
    backend_port = endpoint_port(option(broker["args"], "--backend"))
    assert backend_port == endpoint_port(DEFAULT_WORKER_ENDPOINT)
    assert not is_local_endpoint(option(broker["args"], "--backend")) and "--keys" in broker["args"]
    assert {p["name"]: p["containerPort"] for p in broker["ports"]} == {"workers": backend_port}
    (workers_port,) = services["intgrads-workers"]["spec"]["ports"]
    assert workers_port["port"] == backend_port
    assert option(worker["args"], "--connect") == f"tcp://intgrads-workers:{backend_port}"
    assert services["intgrads-workers"]["spec"]["publishNotReadyAddresses"] is True
    # HTTP: the port gunicorn's settings default to, everywhere.
    http_port = int(runpy.run_path(str(REPO / "frontend" / "gunicorn.conf.py"))["bind"].rsplit(":", 1)[1])
    assert frontend_env["INTGRADS_BIND"] == f"0.0.0.0:{http_port}"
    assert {p["name"]: p["containerPort"] for p in frontend["ports"]} == {"http": http_port}
    (http,) = services["intgrads-http"]["spec"]["ports"]
    assert http["port"] == http_port
    annotations = deployments["intgrads-broker"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(http_port)
    assert all(s["spec"]["type"] == "ClusterIP" for s in services.values())


def test_probes_and_metrics_point_at_routes_the_app_serves():
    from frontend.falcon_app import create_app

    app = create_app()  # opens no socket
    deployment = by_kind(raw_objects(), "Deployment")["intgrads-broker"]
    frontend = pod_spec(deployment)["containers"][1]
    paths = {frontend["readinessProbe"]["httpGet"]["path"], frontend["livenessProbe"]["httpGet"]["path"],
             deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]}
    assert paths == {"/readyz", "/healthz", "/metrics"}
    for path in paths:
        found = app._router.find(path)
        assert found is not None and hasattr(found[0], "on_get"), path


def test_kubernetes_commands_are_accepted_by_the_installed_cli(tmp_path):
    objects = raw_objects()
    parsed = {}
    for _, container in containers(objects):
        argv = [*(container.get("command") or docker_entrypoint()), *container.get("args", [])]
        argv = [expand_k8s(a, container_env(objects, container)) for a in argv]
        if argv[0] == "intgrads-broker":
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert all(str(Path(a).parent) in mounts for a in argv if a.startswith("/keys/")), argv
            parsed[container["name"]] = parse_cli(argv, stand_ins(argv, tmp_path))
        elif argv[0] == "gunicorn":
            assert argv[1:] == ["frontend:app"]
        else:
            assert container["name"] == "copy-keys" and argv[:2] == ["sh", "-c"]
        probe = container.get("livenessProbe", {}).get("exec")
        if probe:
            parsed[f"{container['name']} probe"] = parse_cli(probe["command"], {})
    assert set(parsed) == {"broker", "worker", "broker probe"}
    assert option(pod_spec(by_kind(objects, "Deployment")["intgrads-broker"])["containers"][0]["args"],
                  "--frontend") == parsed["broker probe"].params["frontend"]
    worker = parsed["worker"].params
    assert worker["cuda"] is True and worker["model_dir"].endswith("/models/model") and worker["name"] == "model"
    assert parsed["broker"].params["name"] == worker["name"] and parsed["broker"].params["workers"] == 0


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
    # The broker's copy step copies exactly what its Secret provides.
    broker_pod = pod_spec(by_kind(raw_objects(), "Deployment")["intgrads-broker"])
    (secret,) = [v["secret"] for v in broker_pod["volumes"] if "secret" in v]
    provided = {item["path"] for item in secret["items"]}
    assert provided == {"broker.key", "broker.key_secret", "authorized/worker.key"}
    copy = broker_pod["initContainers"][0]["command"][2]
    assert all(f"/secret/{p}".rsplit("/", 1)[0] in copy for p in provided)
    assert secret["secretName"] != mounts["/keys"]["secret"]["secretName"]  # workers never get the broker's secret


def test_compose_commands_are_accepted_by_the_installed_cli(tmp_path):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"broker", "frontend", "worker", "worker-gpu"}
    parsed = {}
    for name, service in services.items():
        entrypoint = service.get("entrypoint") or docker_entrypoint()
        argv = [expand_compose(a) for a in [*entrypoint, *service["command"]]]
        if argv[0] == "gunicorn":
            assert argv[1:] == ["frontend:app"] and service["network_mode"] == "service:broker"
            continue
        parsed[name] = parse_cli(argv, stand_ins(argv, tmp_path))
    assert parsed["worker"].params["cuda"] is False and parsed["worker-gpu"].params["cuda"] is True
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert int(expand_compose(devices["count"])) == parsed["worker-gpu"].params["num_cuda_devs"]
    assert option(services["worker"]["command"], "--connect") == "tcp://broker:5556"
    assert services["frontend"]["environment"]["INTGRADS_BROKER"] == option(services["broker"]["command"],
                                                                           "--frontend")
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


def test_the_readme_secret_commands_make_what_the_manifests_mount():
    """README's `kubectl create secret` lines create every secret key a manifest mounts,
    from files `intgrads-broker keys` writes."""
    readme = (REPO / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    made: dict[str, set[str]] = {}
    for name, args in re.findall(r"kubectl create secret generic (\S+)((?: +--from-file=\S+)+)", readme):
        for key, source in re.findall(r"--from-file=([^=\s]+)=(\S+)", args):
            made.setdefault(name, set()).add(key)
            assert re.fullmatch(r"keys/(broker\.key(_secret)?|worker\d+\.key(_secret)?)", source), source
    mounted: dict[str, set[str]] = {}
    for obj in raw_objects():
        if obj.get("kind") != "Deployment":
            continue
        for volume in pod_spec(obj).get("volumes", []):
            secret = volume.get("secret")
            if secret:
                mounted.setdefault(secret["secretName"], set()).update(i["key"] for i in secret["items"])
    assert mounted and made == mounted
