"""Hosts made of Linux network namespaces, for the multi-host tests.

A :class:`Lab` is a "front" host and any number of "gpu" hosts, each a network
namespace of its own with its own loopback; every gpu host is joined to the
front host by a veth pair on a private /24 (10.231.N.0/24, N = 1, 2, ...)
that exists only inside these namespaces. Nothing is addressed in the root
namespace and the front host does not forward, so gpu hosts see only the
front host. Processes run inside a host with ``ip netns exec``; a thread of
the test process can enter a host too (:func:`enter`), so an HTTP client can
reach ports that the front host keeps on its loopback.

Cleanup always runs (the fixture's finaliser, then ``atexit``): every process
started here and every process still inside a namespace is killed, then the
namespaces are deleted (which deletes their veth pairs). Namespaces left by a
test run that died without cleaning up (its pid is in their names) are
removed by the next Lab.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stack import REPO, alive, base_env, stop_process

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
PREFIX = "igz"
SUBNET = "10.231.{n}.{host}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """One ``ip`` command; CalledProcessError names what it printed."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode:
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
    return result


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None when they can): needs root and iproute2."""
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode:
        return f"'ip netns add' failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def enter(name: str) -> None:
    """Move the calling thread into namespace ``name`` (sockets it opens later live there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def pids_in(name: str) -> list[int]:
    listed = ip("netns", "pids", name, check=False)
    return [int(p) for p in listed.stdout.split() if p.isdigit()]


def kill_namespace(name: str) -> None:
    """SIGKILL whatever still runs inside ``name``, then delete it."""
    for pid in pids_in(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids_in(name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    ip("netns", "del", name, check=False)


def remove_stale() -> list[str]:
    """Delete namespaces left by earlier runs whose process is gone."""
    removed = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)[a-z]?-\w+", name)
        if match and not alive(int(match.group(1))):
            kill_namespace(name)
            removed.append(name)
    return removed


@dataclass
class Host:
    """One namespace: a name, and its address on its link to the front host."""

    name: str
    address: str | None = None  # gpu hosts: their own end; the front host: None (one per link)
    front_address: str | None = None  # gpu hosts: the front host's end of their link
    front_link: str | None = None  # the veth end inside the front host (for partitions)

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass
class Lab:
    """A front host and gpu hosts joined by veth pairs; a context manager."""

    gpu_hosts: int = 2
    front: Host = field(init=False)
    gpus: list[Host] = field(init=False, default_factory=list)
    processes: list[subprocess.Popen] = field(init=False, default_factory=list)
    _closed: bool = field(init=False, default=False)

    _made = 0  # labs made by this process: each gets its own names

    def __post_init__(self) -> None:
        remove_stale()
        Lab._made += 1
        tag = f"{PREFIX}{os.getpid()}{chr(ord('a') + (Lab._made - 1) % 26)}"  # veth names stay under 15 bytes
        self.front = Host(f"{tag}-front")
        atexit.register(self.close)
        try:
            self._add_namespace(self.front.name)
            for n in range(1, self.gpu_hosts + 1):
                self.gpus.append(self._add_gpu_host(tag, n))
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")

    def _add_gpu_host(self, tag: str, n: int) -> Host:
        host = Host(f"{tag}-gpu{n}", SUBNET.format(n=n, host=2), SUBNET.format(n=n, host=1), f"{tag}f{n}")
        self._add_namespace(host.name)
        gpu_end = f"{tag}g{n}"
        # Created inside the front namespace, so no interface ever appears in the root one.
        ip("-n", self.front.name, "link", "add", host.front_link, "type", "veth", "peer", "name", gpu_end,
           "netns", host.name)
        ip("-n", self.front.name, "addr", "add", f"{host.front_address}/24", "dev", host.front_link)
        ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", gpu_end)
        ip("-n", self.front.name, "link", "set", host.front_link, "up")
        ip("-n", host.name, "link", "set", gpu_end, "up")
        return host

    # running things -------------------------------------------------------
    def popen(self, host: Host, argv: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` inside ``host`` (output to ``log``); killed at cleanup."""
        process = subprocess.Popen(host.command(argv), cwd=REPO, env=base_env(env), stdout=log.open("ab"),
                                   stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def run(self, host: Host, argv: list[str], *, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``host`` to completion (bounded by ``timeout``)."""
        return subprocess.run(host.command(argv), cwd=REPO, env=base_env(env), capture_output=True, text=True,
                              timeout=timeout)

    def executor(self, host: Host, threads: int) -> ThreadPoolExecutor:
        """Threads living in ``host``'s namespace (for clients of its loopback ports)."""
        return ThreadPoolExecutor(threads, initializer=enter, initargs=(host.name,),
                                  thread_name_prefix=f"in-{host.name}")

    def call_in(self, host: Host, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on a thread inside ``host`` and return its result."""
        with self.executor(host, 1) as pool:
            return pool.submit(fn, *args, **kwargs).result()

    # faults ---------------------------------------------------------------
    def link_down(self, host: Host) -> None:
        """Cut ``host`` off: its link's front end goes down (the gpu end loses carrier)."""
        ip("-n", self.front.name, "link", "set", host.front_link, "down")

    def link_up(self, host: Host) -> None:
        ip("-n", self.front.name, "link", "set", host.front_link, "up")

    # cleanup --------------------------------------------------------------
    def close(self) -> None:
        """Stop our processes, kill anything left in the namespaces, delete them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for process in self.processes:
            stop_process(process, timeout=10)
        for host in [*self.gpus, self.front]:
            kill_namespace(host.name)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
