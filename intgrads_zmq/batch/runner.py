"""The run loop: send examples, keep every worker busy, write each result once.

``concurrency`` requests are in flight at a time (by default the number of
workers the server reports for the model, so the queue stays empty and a
cancel has little to cancel). The first example runs alone: if the server
refuses an *option* the run sends (a 400 naming ``target``, ``metrics``, ...)
every example would fail the same way, so the run stops before writing
anything instead of filling the journal with copies of one error. (One
exception: without ``--target`` each example explains its own predicted
class, so a refused ``contrast`` may be that example's own problem: the
contrast is its prediction. It is recorded like any failure.)

What happens to a failure:

* 400, 413, 500, 504, 507 (this example is bad, too long, or made the model
  fail): recorded as a row with ``error``; the run goes on.
* 503 (overloaded, no worker yet, shutting down), 408, 429, 502, 499, and no
  answer at all: retried after ``Retry-After`` (or a growing back-off), up to
  ``retries`` times; then the run stops without recording it.
* 401, 403, 404, 405 (wrong URL or model): the run stops.

``stop`` (set by Ctrl-C / SIGTERM, or by a failure that stops the run) makes
the loop shut down every open connection (the server cancels those
requests), write the results that had already arrived, and return.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .inputs import Example
from .journal import Journal
from .progress import Progress
from .request import RequestSpec
from .resume import ROWS, TENSORS
from .rows import error_row, ok_row
from .shards import ShardWriter, refs_from_rows
from .transport import Aborted, Failure, HttpFailure, Reply, Transport, Unreachable

RETRY_STATUSES = frozenset({408, 429, 499, 502, 503})
RUN_STATUSES = frozenset({401, 403, 404, 405})


class RunStopped(Exception):
    """A failure that is the server's or the run's, not one example's."""


@dataclass
class RunSettings:
    concurrency: int = 1
    retries: int = 20            # tries of a retryable failure before the run stops
    max_wait: float = 30.0       # cap on one Retry-After / back-off wait (seconds)
    shard_bytes: int = 256 << 20  # a shard is written when its tensors reach this
    shard_examples: int = 500     # ... or this many examples
    shard_seconds: float = 60.0   # ... or its oldest example waited this long


@dataclass
class Outcome:
    example: Example
    attempts: int
    reply: Reply | None = None
    failure: Failure | None = None


@dataclass
class RunResult:
    written: int = 0
    failed: int = 0
    interrupted: bool = False
    error: str | None = None
    discarded: int = 0       # requests cancelled or dropped at the stop (not written)


@dataclass
class _Pending:
    rows: list[dict[str, Any]] = field(default_factory=list)
    since: float = 0.0


class Runner:
    """Explains ``examples`` into the output folder (whose journal may hold rows already)."""

    def __init__(self, transport: Transport, spec: RequestSpec, examples: list[Example], folder: Path,
                 existing_rows: list[dict[str, Any]], settings: RunSettings, progress: Progress,
                 stop: threading.Event, sleep: Callable[[float], bool] | None = None) -> None:
        self.transport = transport
        self.spec = spec
        self.todo = deque(examples)
        self.folder = Path(folder)
        self.settings = settings
        self.progress = progress
        self.stop = stop
        self.shards = ShardWriter(self.folder / TENSORS, refs_from_rows(existing_rows)) if spec.fields else None
        self.pending = _Pending()
        self.result = RunResult()
        self._wait = sleep or stop.wait

    # -- one example (worker threads) ---------------------------------------------------
    def explain(self, example: Example) -> Outcome:
        """Send one example, retrying what may pass; raises RunStopped or Aborted."""
        delay = 0.5
        attempts = 0
        while True:
            attempts += 1
            if self.stop.is_set():
                raise Aborted("the run is stopping")
            try:
                return Outcome(example, attempts, reply=self.transport.explain(self.spec, example.text))
            except HttpFailure as exc:
                failure = exc.failure
                if failure.status in RUN_STATUSES:
                    raise RunStopped(f"the server answered {failure.status} ({failure.code}): "
                                     f"{failure.description}") from None
                if failure.status not in RETRY_STATUSES:
                    return Outcome(example, attempts, failure=failure)
                if attempts > self.settings.retries:
                    raise RunStopped(f"still {failure.status} ({failure.code}: {failure.description}) "
                                     f"after {attempts} tries of example {example.id!r}") from None
                pause = failure.retry_after if failure.retry_after is not None else delay
            except Unreachable as exc:
                if attempts > self.settings.retries:
                    raise RunStopped(f"no answer after {attempts} tries of example {example.id!r}: {exc}") from None
                pause = delay
            delay = min(delay * 2, self.settings.max_wait)
            if self._wait(min(pause, self.settings.max_wait)):
                raise Aborted("the run is stopping")

    # -- the loop (main thread) ---------------------------------------------------------
    def run(self) -> RunResult:
        in_flight: dict[Future[Outcome], Example] = {}
        probing = True
        journal = Journal(self.folder / ROWS)
        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency),
                                  thread_name_prefix="intgrads-batch")
        try:
            while (self.todo or in_flight) and not self.stop.is_set():
                limit = 1 if probing else self.settings.concurrency
                while self.todo and len(in_flight) < limit:
                    example = self.todo.popleft()
                    in_flight[pool.submit(self.explain, example)] = example
                finished, _ = wait(list(in_flight), timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    in_flight.pop(future)
                    outcome = future.result()
                    if probing:
                        self._check_probe(outcome)
                        probing = False
                    self._record(journal, outcome)
                self._flush_if_due(journal)
            self.result.interrupted = bool(self.todo or in_flight)
        except RunStopped as exc:
            self.result.error = str(exc)
        except Aborted:
            self.result.interrupted = True
        finally:
            self.stop.set()
            self._drain(journal, in_flight)
            pool.shutdown(wait=True, cancel_futures=True)
            self._flush(journal)
            journal.close()
            self.progress.close()
        return self.result

    def _check_probe(self, outcome: Outcome) -> None:
        failure = outcome.failure
        if failure is None or failure.status != 400 or failure.field is None:
            return
        option = failure.field.split("[", 1)[0].split(".", 1)[0]
        if option == "contrast" and "target" not in self.spec.options:
            return  # the class explained is each example's prediction: this may be the example's own
        if option in self.spec.options or option == "fields":
            raise RunStopped(f"the server refused the option {option!r}: {failure.description}")

    def _drain(self, journal: Journal, in_flight: dict[Future[Outcome], Example]) -> None:
        """Cancel what is in flight; keep the results that arrived whole anyway."""
        if not in_flight:
            return
        self.transport.abort_all()
        for future in list(in_flight):
            try:
                outcome = future.result()
            except (Aborted, RunStopped, Unreachable):
                self.result.discarded += 1
                continue
            if outcome.failure is not None and outcome.failure.status == 499:
                self.result.discarded += 1
                continue
            self._record(journal, outcome)
        in_flight.clear()

    # -- writing -----------------------------------------------------------------------
    def _record(self, journal: Journal, outcome: Outcome) -> None:
        example = outcome.example
        if outcome.failure is not None:
            journal.append([error_row(example, outcome.failure, attempts=outcome.attempts)])
            self.result.failed += 1
            self.result.written += 1
            self.progress.advance(failed=True)
            return
        reply = outcome.reply
        assert reply is not None
        row = ok_row(example, reply.meta, request_seconds=reply.seconds, attempts=outcome.attempts)
        if self.shards is None:
            journal.append([row])
            self.result.written += 1
        else:
            names = self.shards.add(example.id, reply.tensors)
            row["tensors"] = {"shard": None, "names": names}
            if not self.pending.rows:
                self.pending.since = time.monotonic()
            self.pending.rows.append(row)
        self.progress.advance()

    def _flush_if_due(self, journal: Journal) -> None:
        if self.shards is None or not self.pending.rows:
            return
        settings = self.settings
        if (self.shards.pending_bytes >= settings.shard_bytes
                or len(self.pending.rows) >= settings.shard_examples
                or time.monotonic() - self.pending.since >= settings.shard_seconds):
            self._flush(journal)

    def _flush(self, journal: Journal) -> None:
        """Shard first, then its rows, then the index: no row without its tensors."""
        if self.shards is None or not self.pending.rows:
            return
        name = self.shards.flush()
        for row in self.pending.rows:
            row["tensors"]["shard"] = name
        journal.append(self.pending.rows)
        self.result.written += len(self.pending.rows)
        self.pending.rows = []
        self.shards.write_index()
