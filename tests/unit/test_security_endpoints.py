"""The private ipc:// defaults and the rules on who must authenticate.

intgrads_zmq/service/endpoints.py puts the broker's default sockets in a
per-user directory (0700) and refuses one that is not private; security.py's
``curve_needed`` says which endpoints need CURVE; the frontend refuses, at
start, settings that would send texts in the clear where the broker demands a
key. In-process: directories, sockets and settings, no broker process.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq

from frontend.settings import FrontendSettings
from intgrads_zmq.service import endpoints as ep
from intgrads_zmq.service.broker import Broker, BrokerSettings
from intgrads_zmq.service.security import curve_needed, make_keys

NOBODY = 65534


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A runtime directory of our own, as a login session has."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    monkeypatch.delenv("INTGRADS_BROKER", raising=False)
    return folder


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_defaults_are_ipc_sockets_in_the_users_runtime_directory(runtime):
    assert ep.private_dir() == runtime / "intgrads"
    assert ep.default_client_endpoint() == f"ipc://{runtime}/intgrads/frontend"
    assert ep.default_worker_endpoint() == f"ipc://{runtime}/intgrads/backend"
    assert ep.broker_endpoint() == ep.default_client_endpoint()
    assert not (runtime / "intgrads").exists()  # computing a path makes nothing


def test_without_a_runtime_directory_of_our_own_the_default_is_under_tmp(tmp_path, monkeypatch):
    fallback = Path("/tmp") / f"intgrads-{os.geteuid()}"
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert ep.private_dir() == fallback
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/run")
    assert ep.private_dir() == fallback
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert ep.private_dir() == fallback
    if os.geteuid() == 0:  # after `su`, XDG_RUNTIME_DIR may still name the other user's directory
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, NOBODY, NOBODY)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(theirs))
        assert ep.private_dir() == fallback
    assert ep.private_dir({"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path / "intgrads"  # another process's env


def test_the_private_directory_is_made_0700_whatever_the_umask(runtime):
    old = os.umask(0)
    try:
        made = ep.ensure_private_dir()
    finally:
        os.umask(old)
    assert made == runtime / "intgrads" and mode(made) == 0o700
    assert ep.ensure_private_dir() == made  # and accepted as it is the next time


@pytest.mark.parametrize("bad_mode", [0o755, 0o750, 0o701, 0o707])
def test_a_directory_others_may_enter_is_refused(runtime, bad_mode):
    folder = runtime / "intgrads"
    folder.mkdir()
    folder.chmod(bad_mode)
    with pytest.raises(ep.PrivateDirError, match=f"open to other users .*{bad_mode:04o}.*chmod 700"):
        ep.ensure_private_dir()


def test_a_link_or_a_file_in_its_place_is_refused(runtime, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (runtime / "intgrads").symlink_to(elsewhere)
    with pytest.raises(ep.PrivateDirError, match="not a directory"):
        ep.ensure_private_dir()
    (runtime / "intgrads").unlink()
    (runtime / "intgrads").write_text("")
    with pytest.raises(ep.PrivateDirError, match="not a directory"):
        ep.ensure_private_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory owned by another user needs root")
def test_a_directory_made_by_another_user_is_refused(runtime):
    """Someone who made /tmp/intgrads-<your uid> first could listen there in your place."""
    folder = runtime / "intgrads"
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(ep.PrivateDirError, match=f"belongs to uid {NOBODY}"):
        ep.ensure_private_dir()


def test_only_endpoints_in_the_private_directory_are_checked(runtime, tmp_path):
    assert ep.prepare_private(ep.default_client_endpoint()) == ep.default_client_endpoint()
    assert mode(runtime / "intgrads") == 0o700
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    for endpoint in (f"ipc://{open_dir}/x", "ipc://@abstract", "tcp://127.0.0.1:5555", "inproc://x"):
        assert ep.prepare_private(endpoint) == endpoint  # the caller's explicit choice


def test_a_second_broker_on_the_same_ipc_endpoints_is_refused_and_the_first_keeps_them(runtime):
    front, back = ep.default_client_endpoint(), ep.default_worker_endpoint()
    first_context, second_context = zmq.Context(), zmq.Context()
    first = Broker(BrokerSettings(frontend=front, backend=back), first_context)
    first.bind()
    try:
        assert ep.ipc_in_use(front) and ep.ipc_in_use(back)
        inode = os.stat(ep.ipc_path(front)).st_ino
        second = Broker(BrokerSettings(frontend=front, backend=back), second_context)
        with pytest.raises(ValueError, match="another broker listens there"):
            second.bind()
        assert os.stat(ep.ipc_path(front)).st_ino == inode  # libzmq would have replaced the file
    finally:
        first.close()
        first_context.destroy(linger=0)
        second_context.destroy(linger=0)
    assert not ep.ipc_in_use(front)  # a file left by a closed (or killed) broker is no obstacle


@pytest.mark.parametrize("endpoint,beyond,everywhere", [
    ("tcp://127.0.0.1:5555", False, True),
    ("tcp://[::1]:5555", False, True),
    ("tcp://localhost:5555", False, True),
    ("tcp://0.0.0.0:5555", True, True),
    ("tcp://*:5555", True, True),
    ("tcp://10.1.2.3:5555", True, True),
    ("tcp://broker:5555", True, True),
    ("ipc:///run/user/1000/intgrads/frontend", False, False),
    ("ipc://@intgrads", False, True),  # Linux's abstract names: any local user may connect
    ("inproc://frontend", False, False),
])
def test_which_endpoints_need_curve(endpoint, beyond, everywhere):
    assert curve_needed(endpoint) is beyond
    assert curve_needed(endpoint, everywhere=True) is everywhere


@pytest.mark.parametrize("role", ["frontend", "backend"])
def test_a_broker_refuses_to_open_a_port_beyond_loopback_without_keys(role):
    settings = BrokerSettings(frontend="inproc://f", backend="inproc://b")
    setattr(settings, role, "tcp://0.0.0.0:5999")
    with pytest.raises(ValueError, match=f"{role} tcp://0.0.0.0:5999 is reachable from other hosts.*--keys"):
        Broker(settings, zmq.Context()).bind()


# the frontend's settings ------------------------------------------------------------

def frontend_env(monkeypatch, **values: str) -> None:
    for name in ("INTGRADS_BROKER", "INTGRADS_SERVER_KEY", "INTGRADS_CLIENT_KEY", "INTGRADS_REQUIRE_CURVE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_the_frontend_defaults_to_the_private_socket(runtime, monkeypatch):
    frontend_env(monkeypatch)
    settings = FrontendSettings.from_env()
    assert settings.broker == ep.default_client_endpoint() and settings.curve is None
    assert mode(runtime / "intgrads") == 0o700  # checked (made) at start


def test_the_frontend_refuses_a_default_directory_that_is_not_private(runtime, monkeypatch):
    frontend_env(monkeypatch)
    (runtime / "intgrads").mkdir(mode=0o777)
    (runtime / "intgrads").chmod(0o777)
    with pytest.raises(ep.PrivateDirError):
        FrontendSettings.from_env()


def test_a_frontend_reaching_beyond_loopback_needs_its_key_pair(runtime, monkeypatch, tmp_path):
    frontend_env(monkeypatch, INTGRADS_BROKER="tcp://broker:5555")
    with pytest.raises(ValueError, match="leaves this host.*INTGRADS_SERVER_KEY.*INTGRADS_CLIENT_KEY"):
        FrontendSettings.from_env()
    keys = tmp_path / "keys"
    make_keys(keys, workers=0, frontends=1)
    monkeypatch.setenv("INTGRADS_SERVER_KEY", str(keys / "broker.key"))
    with pytest.raises(ValueError, match="go together"):
        FrontendSettings.from_env()
    monkeypatch.setenv("INTGRADS_CLIENT_KEY", str(keys / "frontend0.key"))  # the public half, by mistake
    with pytest.raises(ValueError, match="holds no secret key"):
        FrontendSettings.from_env()
    monkeypatch.setenv("INTGRADS_CLIENT_KEY", str(keys / "frontend0.key_secret"))
    settings = FrontendSettings.from_env()
    assert settings.curve.secret_file == keys / "frontend0.key_secret"
    assert settings.curve.server_public_file == keys / "broker.key"


def test_with_curve_required_even_loopback_tcp_needs_the_key_pair(runtime, monkeypatch):
    frontend_env(monkeypatch, INTGRADS_BROKER="tcp://127.0.0.1:5555")
    assert FrontendSettings.from_env().curve is None  # plain loopback TCP: asked for, allowed
    monkeypatch.setenv("INTGRADS_REQUIRE_CURVE", "1")
    with pytest.raises(ValueError, match="is TCP and INTGRADS_REQUIRE_CURVE is set"):
        FrontendSettings.from_env()
    monkeypatch.delenv("INTGRADS_BROKER")
    assert FrontendSettings.from_env().broker.startswith("ipc://")  # private ipc needs no key


def test_curve_on_loopback_without_keys_is_a_usage_error(runtime):
    from click.testing import CliRunner

    from intgrads_zmq.cli import main

    result = CliRunner().invoke(main, ["start", "--workers", "0", "--curve-on-loopback"])
    assert result.exit_code != 0 and "CURVE on loopback needs keys" in result.output
    result = CliRunner().invoke(main, ["start", "--workers", "0"], env={"INTGRADS_REQUIRE_CURVE": "1"})
    assert result.exit_code != 0 and "CURVE on loopback needs keys" in result.output


def test_a_worker_without_keys_where_the_broker_demands_them_is_a_usage_error(runtime, tmp_path):
    """It would be refused at every handshake and retry for ever, silently."""
    from click.testing import CliRunner

    from intgrads_zmq.cli import main

    runner = CliRunner()
    beyond = runner.invoke(main, ["worker", "--connect", "tcp://gpu-box:5556", "--cpu"])
    assert beyond.exit_code == 2 and "leaves this host" in beyond.output and "--server-key" in beyond.output
    required = runner.invoke(main, ["worker", "--connect", "tcp://127.0.0.1:5556", "--cpu"],
                             env={"INTGRADS_REQUIRE_CURVE": "1"})
    assert required.exit_code == 2 and "INTGRADS_REQUIRE_CURVE is set" in required.output
    half = runner.invoke(main, ["worker", "--connect", "tcp://gpu-box:5556", "--server-key", __file__])
    assert half.exit_code == 2 and "go together" in half.output
