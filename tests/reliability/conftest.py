"""The stack most reliability tests share, started once for this package.

Broker (queue bound 6, heartbeat 0.5 s) with two supervised tiny-BERT workers
("tiny") whose faults trigger on words in the text, one remote worker ("oomy")
whose every chunk above 2 steps runs "out of memory", and gunicorn in front.
The test files are named so that the one with a stack of its own
(test_broker_crash_curve_shutdown.py) runs before this one starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from intgrads_zmq.testing.reliability import load_specs, references
from intgrads_zmq.testing.stack import (
    Broker,
    Frontend,
    RemoteWorker,
    start_broker,
    start_frontend,
    start_remote_worker,
)

FAULTS = {"exit_on": "POISON", "raise_on": "EXPLODE", "sleep_on": "SLOW", "sleep_seconds": 2}
QUEUE_BOUND = 6
MODEL_ARGS = ["--n-steps", "16", "--max-length", "128"]
# The fuzzer explores up to these limits (they also shape /openapi.json).
FRONTEND_ENV = {"INTGRADS_MAX_STEPS": "64", "INTGRADS_MAX_SEQUENCES": "4", "INTGRADS_MAX_LENGTH": "128"}


@dataclass
class MainStack:
    broker: Broker
    oomy: RemoteWorker
    http: Frontend
    folder: Path
    model_dir: Path

    @property
    def port(self) -> int:
        return int(self.http.url.rsplit(":", 1)[1])

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Both supervised workers and the remote one registered."""
        self.broker.wait_ready(workers=2, model="tiny", timeout=timeout)
        self.broker.wait_ready(workers=1, model="oomy", timeout=timeout)


@pytest.fixture(scope="package")
def main_stack(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability")
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny", *MODEL_ARGS], workers=2,
                          env={"INTGRADS_FAULTS": json.dumps(FAULTS)},
                          extra_args=["--queue-bound", str(QUEUE_BOUND)], folder=folder)
    oomy = start_remote_worker(broker.backend, ["--model", str(tiny_bert_dir), "--name", "oomy", *MODEL_ARGS],
                               folder=folder, env={"INTGRADS_FAULTS": json.dumps({"oom_above": 2})})
    frontend = None
    try:
        frontend = start_frontend(broker.frontend, env=FRONTEND_ENV, folder=folder)
        stack = MainStack(broker, oomy, frontend, folder, Path(tiny_bert_dir))
        stack.wait_healthy()
        yield stack
    finally:
        if frontend is not None:
            frontend.stop()
        oomy.stop()
        broker.stop()


@pytest.fixture(scope="package")
def specs():
    return load_specs()


@pytest.fixture(scope="package")
def expected(main_stack, specs):
    """Every spec's answer when sent alone (byte-comparison references)."""
    return references(main_stack.http.url, specs)


FIGURES: list[tuple[str, str]] = []


@pytest.fixture
def record():
    """``record(what, figures)``: printed in the terminal summary of the run."""

    def add(what: str, figures: str) -> None:
        FIGURES.append((what, figures))
        print(f"{what}: {figures}")

    return add


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("reliability figures")
        for what, figures in FIGURES:
            terminalreporter.write_line(f"{what}: {figures}")
