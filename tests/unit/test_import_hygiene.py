"""The service side stays torch- and numpy-free.

The HTTP frontend, the broker process and the CLI's ``status`` command never
compute: importing torch there would cost seconds and hundreds of MB per
process for nothing. Each case runs in a fresh interpreter, since this test
session has long imported torch itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from intgrads_zmq.testing.stack import REPO, base_env

HEAVY = ("torch", "numpy")
REPORT = f"import sys, json; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"

CASES = {
    "frontend app": "import frontend; frontend.app",
    "frontend handles a request": (
        "import falcon.testing, frontend; "
        "client = falcon.testing.TestClient(frontend.app); "
        "assert client.simulate_get('/healthz').status_code == 200; "
        "client.simulate_get('/openapi.json')"
    ),
    "broker process modules": (
        "import intgrads_zmq.service.broker, intgrads_zmq.service.assembly, intgrads_zmq.cli"
    ),
    "cli status against no broker": (
        "import click, intgrads_zmq.cli as cli\n"
        "try:\n"
        "    cli.main(['status', '--frontend', 'ipc:///nonexistent/igz-hygiene', '--timeout', '0.2'],"
        " standalone_mode=False)\n"
        "except click.ClickException:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('status found a broker where none runs')\n"
        "import intgrads_zmq.service.broker_client"
    ),
}


@pytest.mark.parametrize("code", CASES.values(), ids=list(CASES))
def test_no_torch_or_numpy(code):
    env = base_env({"INTGRADS_BROKER": "ipc:///nonexistent/igz-hygiene", "INTGRADS_CONNECT_WAIT": "0.1"})
    done = subprocess.run([sys.executable, "-c", f"{code}\n{REPORT}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
