"""The time trial's parent side: one child process per method, run alternately.

The parent hands the texts to the methods' children (:mod:`bench.trial_child`)
in turn, swapping who goes first every text, so that load from other
processes on a shared machine and thermal drift hit both methods alike.
Progress goes to stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from intgrads_zmq.testing.stack import REPO, base_env, stop_process


class ChildFailed(RuntimeError):
    """A method's child process died; its stderr (passed through) says why."""


class Child:
    """One method in its own persistent interpreter (its memory is its own)."""

    def __init__(self, method: str, job: dict[str, Any], folder: Path) -> None:
        self.method = method
        job_path = folder / f"{method}-job.json"
        job_path.write_text(json.dumps({**job, "run": method}))
        command = [sys.executable, "-m", "bench.trial_child", str(job_path)]
        self.process = subprocess.Popen(command, cwd=REPO, env=base_env(), text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise ChildFailed(f"the '{self.method}' run failed (exit {code}); see stderr")
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self) -> None:
        stop_process(self.process, timeout=10)


def schedule(methods: list[str], examples: int, repeats: int) -> list[tuple[str, int]]:
    """Alternate the methods text by text, swapping who goes first each time,
    so that load from other processes and thermal drift hit both alike."""
    runs = []
    for turn in range(examples * repeats):
        order = methods if turn % 2 == 0 else methods[::-1]
        runs.extend((method, turn % examples) for method in order)
    return runs


def run_trial(job: dict[str, Any], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Start one child per method, warm each up, run the schedule, collect."""
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="time-trial-") as folder:
        children = {m: Child(m, job, Path(folder)) for m in methods}
        try:
            results = {m: {**child.answer(), "runs": []} for m, child in children.items()}
            runs = schedule(methods, len(job["texts"]), job["repeats"])
            warmups = [(m, 0) for m in methods] if job["warmup"] else []
            with tqdm(total=len(warmups) + len(runs), unit="run", file=sys.stderr) as bar:
                for method, index in warmups:
                    bar.set_description(f"warm-up {method}")
                    children[method].ask(f"run {index}")
                    bar.update()
                for method, index in runs:
                    bar.set_description(f"{method} text {index + 1}")
                    results[method]["runs"].append((index, children[method].ask(f"run {index}")))
                    bar.update()
            for method, child in children.items():
                results[method].update(child.ask("stop"))
        finally:
            for child in children.values():
                child.close()
    return {m: _summarise(r, len(job["texts"])) for m, r in results.items()}


def _summarise(result: dict[str, Any], examples: int) -> dict[str, Any]:
    runs = result.pop("runs")
    first = {index: outcome for index, outcome in reversed(runs)}  # first repeat of each text
    result["seconds"] = [outcome["seconds"] for _, outcome in runs]
    result["targets"] = [first[i]["target"] for i in range(examples)]
    result["ig_sums"] = [first[i]["ig_sum"] for i in range(examples)]
    result["chunks"] = sorted({outcome["chunk"] for _, outcome in runs})
    return result
