"""Child processes: dying with the parent, stopping them, reporting their exit.

Used by the supervisor (model workers, ``multiprocessing`` processes) and by
process assembly (gunicorn, a ``subprocess.Popen``); both kinds are stopped
by the same rule. Stdlib only: the broker process imports it.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("intgrads.processes")

PR_SET_PDEATHSIG = 1
KILL_WAIT = 5.0  # seconds to reap a process after SIGKILL

# A worker that could not load its model exits with this code (after telling
# the broker why, when it could reach it).
EXIT_LOAD_FAILED = 3


@dataclass(frozen=True)
class WorkerExit:
    """A supervised worker process ended: its name (the start of its ZeroMQ
    identity), its model and its exit code."""

    name: str
    model: str
    exitcode: int


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies, so no
    child outlives a killed broker (no-op where prctl does not exist)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass


def _exited(process: Any) -> bool:
    if isinstance(process, subprocess.Popen):
        return process.poll() is not None
    return process.exitcode is not None


def _wait(process: Any, timeout: float) -> None:
    if isinstance(process, subprocess.Popen):
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    else:
        process.join(timeout=timeout)


def stop_processes(processes: list[Any], grace: float) -> None:
    """SIGTERM each process, wait up to ``grace`` seconds for all of them, then
    SIGKILL and reap what is left. Takes ``subprocess.Popen`` and
    ``multiprocessing.Process`` objects alike."""
    for process in processes:
        if not _exited(process):
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        _wait(process, max(0.0, deadline - time.monotonic()))
    for process in processes:
        if not _exited(process):
            log.warning("pid %d ignored SIGTERM for %.0f s; killing it", process.pid, grace)
            process.kill()
            _wait(process, KILL_WAIT)
