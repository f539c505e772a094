"""Starts local workers, restarts the ones that exit, stops them all at the end.

Workers are started with multiprocessing's *spawn* method: a fresh
interpreter that inherits neither torch state nor ZeroMQ sockets. Each start
gets a new name (the start of its ZeroMQ identities), so the broker never
confuses a replacement with the worker it replaces. :meth:`Supervisor.poll`
is called from the broker's loop (same thread) and reports the workers that
just exited (:class:`WorkerExit`), so the broker can re-dispatch their requests
at once instead of waiting for missed heartbeats, and can tell a worker that
died while loading its model. Restarts back off exponentially while a slot
keeps failing. A worker that exits 0 was drained (``intgrads-broker drain``,
or SIGTERM): its slot is retired, not restarted, and the others keep running.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from .processes import WorkerExit, stop_processes
from .worker import WorkerConfig, worker_process

log = logging.getLogger("intgrads.supervisor")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # seconds up before a slot's failure count resets


@dataclass
class Slot:
    """One worker position: its template config and current process."""

    index: int
    config: WorkerConfig
    process: Any = None
    identity: str = ""
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    drained: bool = False  # exited 0 after a drain: retired for good


class Supervisor:
    """Keeps one process alive per slot until :meth:`stop`."""

    def __init__(self, configs: list[WorkerConfig]) -> None:
        self.slots = [Slot(i, c) for i, c in enumerate(configs)]
        self._spawn = multiprocessing.get_context("spawn")
        self.stopped = False

    def start(self) -> None:
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: Slot) -> None:
        slot.identity = f"{slot.config.model.name}-w{slot.index}-{uuid.uuid4().hex[:6]}"
        config = replace(slot.config, identity=slot.identity, parent_pid=os.getpid())
        process = self._spawn.Process(target=worker_process, args=(config,), name=f"intgrads-worker-{slot.index}")
        process.start()
        slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None
        log.info("started worker %d (pid %d) on %s", slot.index, process.pid, config.placement.describe())

    def poll(self) -> list[WorkerExit]:
        """Reap exited workers, schedule and perform restarts; report the dead."""
        if self.stopped:
            return []
        now = time.monotonic()
        gone = []
        for slot in self.slots:
            process = slot.process
            if process is not None and process.exitcode is not None:
                gone.append(WorkerExit(slot.identity, slot.config.model.name, process.exitcode))
                if process.exitcode == 0:
                    self._retire(slot)
                else:
                    self._schedule_restart(slot, now, process.exitcode)
            elif process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
        return gone

    def _retire(self, slot: Slot) -> None:
        slot.process.join(timeout=0)
        slot.process, slot.restart_at, slot.drained = None, None, True
        left = sum(1 for s in self.slots if not s.drained)
        log.info("worker %d (%s) drained and exited; not restarted (%d worker slots left)",
                 slot.index, slot.identity, left)

    def _schedule_restart(self, slot: Slot, now: float, exitcode: int) -> None:
        if now - slot.started_at > STABLE_AFTER:
            slot.failures = 0
        delay = min(BACKOFF_MAX, BACKOFF_START * (2**slot.failures))
        slot.failures += 1
        slot.process.join(timeout=0)
        slot.process = None
        slot.restart_at = now + delay
        log.warning("worker %d exited with code %s; restarting in %.1f s", slot.index, exitcode, delay)

    @property
    def all_drained(self) -> bool:
        return all(slot.drained for slot in self.slots)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every worker, wait up to ``grace``, then SIGKILL the rest."""
        self.stopped = True
        stop_processes([s.process for s in self.slots if s.process is not None], grace)
