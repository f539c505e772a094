"""``gunicorn frontend`` as the README spells it: real gunicorn processes.

Gunicorn finds settings only through ``-c``, ``GUNICORN_CMD_ARGS`` or
``./gunicorn.conf.py``; without ours it serves with sync workers and a 30 s
timeout. Each launch here proves our settings applied from the repository
root and from another directory: it listens where INTGRADS_BIND says
(gunicorn's own default is 127.0.0.1:8000) and logs the gthread worker. The
broker is started with ``--max-steps 1000``: the frontend must accept what
the workers accept (defect: it kept its own cap of 300).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from intgrads_zmq.testing.stack import PYTHON, REPO, Frontend, base_env, free_port, start_broker

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
TINY_REQUEST = {"sequence": "a great film", "fields": []}  # JSON summary only: fast


@pytest.fixture(scope="module")
def broker(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("launch")
    running = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], workers=1, folder=folder,
                           # A 500-step request keeps the worker busy for a while on a
                           # loaded 2-core machine: a lenient heartbeat, not 0.5 s.
                           extra_args=["--max-steps", "1000", "--heartbeat", "2"])
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def launch(command: list[str], cwd: Path, broker_endpoint: str, log_folder: Path) -> Frontend:
    """Start ``command`` (a gunicorn command line with no -c) and wait until it serves."""
    port = free_port()
    log = log_folder / f"gunicorn-{port}.log"
    env = base_env({"INTGRADS_BROKER": broker_endpoint, "INTGRADS_BIND": f"127.0.0.1:{port}",
                    "INTGRADS_ACCESS_LOG": ""})
    env.pop("GUNICORN_CMD_ARGS", None)
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    frontend = Frontend(process, f"http://127.0.0.1:{port}", log)
    try:  # not serving on INTGRADS_BIND's port means our settings were not applied
        frontend.wait_serving(60)
    except (RuntimeError, TimeoutError):
        frontend.stop()
        raise
    return frontend


def assert_serves_with_our_settings(frontend: Frontend) -> None:
    log = frontend.log.read_text(errors="replace")
    assert "Using worker: gthread" in log, log[-2000:]
    status, _, raw = frontend.post("/model/?format=json", {**TINY_REQUEST, "n_steps": 500})
    assert status == 200, raw[:500]
    assert json.loads(raw)["n_steps"] == 500
    status, _, raw = frontend.post("/model/?format=json", {**TINY_REQUEST, "n_steps": 1001})
    body = json.loads(raw)
    assert status == 400 and body["field"] == "n_steps" and "1000" in body["description"]


@pytest.mark.parametrize("app", ["frontend", "frontend:app"])
@pytest.mark.parametrize("where", ["repo root", "elsewhere"])
def test_gunicorn_command_serves_with_our_settings(broker, tmp_path, app, where):
    cwd = REPO if where == "repo root" else tmp_path
    frontend = launch([GUNICORN, app], cwd, broker.frontend, tmp_path)
    try:
        assert_serves_with_our_settings(frontend)
    finally:
        frontend.stop()


def test_python_dash_m_gunicorn_from_elsewhere(broker, tmp_path):
    frontend = launch([PYTHON, "-m", "gunicorn", "frontend"], tmp_path, broker.frontend, tmp_path)
    try:
        assert_serves_with_our_settings(frontend)
    finally:
        frontend.stop()


def test_a_configuration_of_the_users_own_still_wins(broker, tmp_path):
    """A ./gunicorn.conf.py in the working directory is the user's choice."""
    (tmp_path / "gunicorn.conf.py").write_text(
        "import os\nbind = os.environ['INTGRADS_BIND']\nworker_class = 'sync'\ncontrol_socket_disable = True\n")
    frontend = launch([GUNICORN, "frontend"], tmp_path, broker.frontend, tmp_path)
    try:
        assert "Using worker: sync" in frontend.log.read_text(errors="replace")
    finally:
        frontend.stop()


def _pth_in(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read("intgrads_zmq_gunicorn.pth")


def test_both_install_kinds_ship_the_start_up_line(tmp_path):
    """``pip install .`` and ``pip install -e .`` (what make install does) both
    put the .pth at the root of site-packages, where Python runs it."""
    expected = (REPO / "frontend" / "gunicorn_hook.pth").read_bytes()
    subprocess.run([PYTHON, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "normal"), str(REPO)], check=True, cwd=tmp_path, env=base_env(),
                   capture_output=True, timeout=240)
    subprocess.run([PYTHON, "-c", f"from setuptools import build_meta; build_meta.build_editable({str(tmp_path / 'editable')!r})"],
                   check=True, cwd=REPO, env=base_env(), capture_output=True, timeout=240)
    wheels = [*(tmp_path / "normal").glob("intgrads_zmq-*.whl"), *(tmp_path / "editable").glob("*.whl")]
    assert len(wheels) == 2 and all(_pth_in(wheel) == expected for wheel in wheels)
