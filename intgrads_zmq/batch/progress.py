"""The progress line on stderr: done / total, examples per second, ETA.

On a terminal it redraws one line in place (at most ten times a second); in
a log file or a pipe it prints a plain line every ``interval`` seconds, so a
long run under nohup leaves a readable trace rather than carriage returns.
The rate counts this run's examples only (not those a resumed run skipped).
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Counts finished examples and shows the rate and time left."""

    def __init__(self, total: int, already: int, stream: TextIO, *, tty: bool | None = None,
                 interval: float = 10.0, enabled: bool = True) -> None:
        self.total = total
        self.already = already
        self.done = 0
        self.failed = 0
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval if not self.tty else 0.1
        self.enabled = enabled
        self.started = time.monotonic()
        self._last_draw = 0.0

    def advance(self, *, failed: bool = False) -> None:
        self.done += 1
        self.failed += int(failed)
        self._maybe_draw()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        finished = self.already + self.done
        rate = self.done / elapsed
        remaining = self.total - finished
        eta = format_duration(remaining / rate) if rate > 0 else "?"
        percent = 100.0 * finished / self.total if self.total else 100.0
        failed = f", {self.failed} failed" if self.failed else ""
        text = (f"{finished}/{self.total} ({percent:.0f}%) {rate:.2f} ex/s, "
                f"elapsed {format_duration(elapsed)}, ETA {eta}{failed}")
        if not self.tty:
            return text
        width = shutil.get_terminal_size((80, 20)).columns
        bar_width = max(10, min(40, width - len(text) - 4))
        filled = int(bar_width * finished / self.total) if self.total else bar_width
        return f"[{'#' * filled}{'.' * (bar_width - filled)}] {text}"[: width - 1]

    def _maybe_draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state (and end the terminal line)."""
        if not self.enabled:
            return
        self._maybe_draw(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
