"""intgrads_zmq/service/exposure.py: which binds get the 'put a proxy in front' warning."""

from __future__ import annotations

import pytest

from intgrads_zmq.service.exposure import README_SECTION, is_loopback, public_bind_warning

LOOPBACK = ["127.0.0.1", "127.8.9.10", "localhost", "LocalHost", "localhost.", "api.localhost", "::1", "[::1]",
            "::ffff:127.0.0.1", " 127.0.0.1 "]
REACHABLE = ["0.0.0.0", "::", "[::]", "", "192.168.1.20", "10.0.0.1", "203.0.113.7", "2001:db8::1",
             "fe80::1%eth0", "example.org", "my-host", "::ffff:10.0.0.1", "128.0.0.1"]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_binds_get_no_warning(host):
    assert is_loopback(host)
    assert public_bind_warning(host) is None


@pytest.mark.parametrize("host", REACHABLE)
def test_binds_other_machines_can_reach_are_warned_about_with_the_readme_section(host):
    assert not is_loopback(host)
    warning = public_bind_warning(host)
    assert warning is not None
    assert f'"{README_SECTION}"' in warning and "nginx" in warning and "127.0.0.1" in warning


def test_the_wildcard_bind_is_named_as_every_interface():
    assert "every interface" in public_bind_warning("0.0.0.0")
    assert "every interface" in public_bind_warning("::")
    assert "203.0.113.7" in public_bind_warning("203.0.113.7")


def test_exposure_stays_free_of_heavy_imports():
    import subprocess
    import sys

    code = ("import sys, intgrads_zmq.service.exposure as e; e.public_bind_warning('0.0.0.0'); "
            "print(sorted(m for m in ('torch', 'numpy', 'zmq') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_intgrads_warns_when_it_binds_beyond_loopback(monkeypatch):
    """The all-in-one command prints the warning (and still serves) for 0.0.0.0."""
    from click.testing import CliRunner

    from intgrads_zmq import cli
    from intgrads_zmq.service import assembly

    monkeypatch.setattr(assembly, "run_all_in_one", lambda *args, **kwargs: 0)
    runner = CliRunner()
    public = runner.invoke(cli.intgrads, ["-h", "0.0.0.0", "--cpu"])
    assert public.exit_code == 0 and "warning:" in public.stderr and "Behind a proxy" in public.stderr
    local = runner.invoke(cli.intgrads, ["--cpu"])
    assert local.exit_code == 0 and "warning" not in local.stderr
