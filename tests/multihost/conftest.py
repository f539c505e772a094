"""Fixtures for the multi-host tests: namespace hosts, keys, and reference answers.

The hosts are Linux network namespaces (intgrads_zmq.testing.netns); without
root or iproute2 every test here is skipped with the reason printed.
"""

from __future__ import annotations

import subprocess

import pytest

from intgrads_zmq.testing import netns
from intgrads_zmq.testing.stack import PYTHON, REPO, base_env, start_broker, start_frontend
from tests.multihost.cluster import MODEL, Cluster

REASON = netns.unavailable_reason()
TEXTS = [f"{a} {b} , {c} ." for a, b, c in [
    ("a great film", "with wonderful acting", "not boring"),
    ("this movie was terrible", "and boring", "a dull mess"),
    ("the story is not very good", "but the music is great", "fun"),
    ("i loved the characters", "and the ending", "brilliant"),
    ("the worst script ever", "a dull mess", "awful"),
    ("brilliant director", "funny scenes", "a sad ending"),
    ("it was fine", "the actors really enjoyed it", "good"),
    ("i hated this long boring film", "the plot", "bad"),
]]
N_STEPS = 4
SLOW_TEXT = "SLOW " + TEXTS[0]  # the workers' fault: this request takes 3 s longer there


def pytest_collection_modifyitems(items):
    if REASON is None:
        return
    print(f"\nmulti-host tests skipped: {REASON}")
    for item in items:
        if "multihost" in str(item.fspath) and {"cluster", "cluster_once", "lab"} & set(item.fixturenames):
            item.add_marker(pytest.mark.skip(reason=f"network namespaces unavailable: {REASON}"))


def make_keys(folder, workers: int) -> None:
    subprocess.run([PYTHON, "-m", "intgrads_zmq.cli", "keys", "--dir", str(folder), "--workers", str(workers)],
                   cwd=REPO, env=base_env(), check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def reference_bodies(tiny_bert_dir, tmp_path_factory):
    """text -> HTTP body from one local worker on this host (ipc, no namespaces)."""
    folder = tmp_path_factory.mktemp("reference")
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", MODEL], workers=1, folder=folder)
    frontend = None
    try:
        broker.wait_ready()
        frontend = start_frontend(broker.frontend, folder=folder)
        bodies = {}
        for text in [*TEXTS, SLOW_TEXT]:
            code, _, body = frontend.post(f"/model/{MODEL}", {"sequence": text, "n_steps": N_STEPS})
            assert code == 200, body[:300]
            bodies[text] = body
        return bodies
    finally:
        if frontend is not None:
            frontend.stop()
        broker.stop()


@pytest.fixture(scope="module")
def cluster_once(tiny_bert_dir, tmp_path_factory):
    """One front host and two gpu hosts with the service running, for a module."""
    folder = tmp_path_factory.mktemp("multihost")
    keys = folder / "keys"
    make_keys(keys, 3)
    lab = netns.Lab(gpu_hosts=2)
    cluster = Cluster(lab, folder, keys, tiny_bert_dir)
    try:
        cluster.start_broker()
        for index, host in enumerate(lab.gpus):
            cluster.start_worker(host, index)
        cluster.start_gunicorn()
        cluster.wait_registered([h.name for h in lab.gpus], timeout=120)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(cluster_once):
    """The module's cluster, healthy at the start of every test (links up, both workers in)."""
    cluster_once.ensure_healthy()
    return cluster_once
