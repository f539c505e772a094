"""The output folder: what is in it, whether this run may continue it, what is done.

Re-running a command resumes it: the journal's rows say which ids are done
(a torn last line is dropped first), shards no row refers to are removed,
and only the rest of the input is sent. ``run.json`` records the settings
that shape the rows (input fields, request options, tensors kept, model);
continuing a folder with different ones would mix two experiments in one
file, so it is refused with the differences named (a folder that holds no
row yet, say after a run stopped on a refused option, takes the new
settings). A lock file keeps two
runners from appending to the same folder at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .inputs import id_key
from .journal import recover, rewrite
from .rows import is_error
from .shards import refs_from_rows, remove_orphans

MANIFEST = "run.json"
ROWS = "rows.jsonl"
TENSORS = "tensors"
SUMMARY = "summary.json"
REPORT = "report.html"
PARQUET = "rows.parquet"
LOCK = ".lock"
# Manifest keys a resumed run must share with the run that made the folder.
BINDING_KEYS = ("input_format", "text_field", "label_field", "id_field", "request")


class OutputError(RuntimeError):
    """The output folder cannot be used for this run (as given)."""


@dataclass
class OutputState:
    """What the folder held when this run opened it."""

    folder: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    dropped_bytes: int = 0
    dropped_lines: int = 0
    duplicates: int = 0
    retried: int = 0
    removed_files: list[str] = field(default_factory=list)
    resumed: bool = False
    lock_fd: int = -1

    @property
    def done(self) -> set[str]:
        return {id_key(row["id"]) for row in self.rows}

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # closing the descriptor drops the flock
            self.lock_fd = -1


def manifest(*, input_path: Path, input_format: str, text_field: str, label_field: str | None,
             id_field: str | None, request: dict[str, Any], output_format: str) -> dict[str, Any]:
    return {"version": 1, "input": str(Path(input_path).resolve()), "input_format": input_format,
            "text_field": text_field, "label_field": label_field, "id_field": id_field,
            "request": request, "output_format": output_format,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences in the keys that bind a resumed run."""
    out = []
    for key in BINDING_KEYS:
        if key == "request":
            before, after = old.get(key) or {}, new.get(key) or {}
            for part in sorted(set(before) | set(after)):
                a, b = before.get(part), after.get(part)
                if part == "options":
                    for name in sorted(set(a or {}) | set(b or {})):
                        if (a or {}).get(name) != (b or {}).get(name):
                            out.append(f"{name}: {(a or {}).get(name)!r} then, {(b or {}).get(name)!r} now")
                elif a != b:
                    out.append(f"{part}: {a!r} then, {b!r} now")
        elif old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} then, {new.get(key)!r} now")
    return out


def open_output(folder: Path, run: dict[str, Any], *, retry_failed: bool = False) -> OutputState:
    """Lock ``folder``, check it belongs to this run, and recover what it holds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = OutputState(folder=folder, lock_fd=_lock(folder))
    try:
        recovered = recover(folder / ROWS)
        _check_manifest(folder, run, has_rows=bool(recovered.rows))
        state.dropped_bytes, state.dropped_lines = recovered.dropped_bytes, recovered.dropped_lines
        rows, seen = [], set()
        for row in recovered.rows:
            key = id_key(row["id"])
            if key in seen:
                state.duplicates += 1
                continue
            seen.add(key)
            rows.append(row)
        if retry_failed:
            kept = [row for row in rows if not is_error(row)]
            state.retried = len(rows) - len(kept)
            rows = kept
        if state.duplicates or state.retried:
            rewrite(folder / ROWS, rows)
        state.rows = rows
        state.resumed = bool(rows) or recovered.dropped_bytes > 0
        state.removed_files = remove_orphans(folder / TENSORS, refs_from_rows(rows))
    except BaseException:
        state.release()
        raise
    return state


def _lock(folder: Path) -> int:
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise OutputError(f"{folder}: another intgrads-batch is writing here (pid {holder or '?'}); "
                          "wait for it or use another --output folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _check_manifest(folder: Path, run: dict[str, Any], *, has_rows: bool) -> None:
    """Refuse other settings once rows exist; a folder without rows takes the new ones."""
    path = folder / MANIFEST
    if path.exists() and has_rows:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise OutputError(f"{path}: unreadable ({exc}); remove the folder or use another") from None
        diff = differences(old, run)
        if diff:
            raise OutputError(f"{folder} holds a run with other settings ({'; '.join(diff)}). Resume it "
                              "with the same options, or write to another --output folder")
        if old.get("input") != run.get("input"):
            run = {**run, "inputs_seen": sorted({*old.get("inputs_seen", [old.get("input")]), run["input"]})}
        run = {**run, "created": old.get("created", run.get("created"))}
    elif has_rows and not path.exists():
        raise OutputError(f"{folder} has {ROWS} but no {MANIFEST}: not a folder this tool made; "
                          "use another --output folder")
    temporary = folder / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(run, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)


def clear_results(folder: Path) -> None:
    """Remove the summary, report and Parquet export of an earlier run: they
    describe fewer rows than the folder will hold, and are rebuilt at the end."""
    for name in (SUMMARY, REPORT, PARQUET):
        (Path(folder) / name).unlink(missing_ok=True)
