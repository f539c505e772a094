"""``intgrads-batch`` as a real process against real servers.

One stack for the module (broker, one tiny-BERT worker process, gunicorn), with
a fault that makes any text containing SLOWMARK sleep 600 s (cut short by a
cancel), plus one run that starts its own private stack with ``--model``.

* kill -9 of the runner mid-way through a 200-line file, a torn line appended
  as a crash mid-write would leave, a re-run: exactly 200 rows, no duplicate,
  every id, the empty text recorded with its 400;
* Ctrl-C while a request runs: exit 130, nothing partial, the request is
  cancelled on the server (the worker, asleep for 600 s, is idle again);
* --model PATH: a private stack, CSV input, tensors in safetensors shards that
  agree with the rows, rows.parquet; no process of the stack is left over;
* target "all", words, faithfulness metrics and a contrast pass through and
  reach rows, summary and report.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from intgrads_zmq.testing.stack import (
    base_env,
    descendants,
    kill_survivors,
    running_stack,
    wait_until,
)
from intgrads_zmq.testing.tiny_models import WORDS

RUNNER = Path(sys.executable).parent / "intgrads-batch"
FAULTS = json.dumps({"sleep_on": "SLOWMARK", "sleep_seconds": 600})
EMPTY_LINE = 57
EPS = 1.19e-7


@pytest.fixture(scope="module")
def stack(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch-stack")
    with running_stack(["--model", str(tiny_bert_dir), "--name", "tiny"], folder=folder,
                       env={"INTGRADS_FAULTS": FAULTS}) as running:
        yield running


def texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(count)]


def write_jsonl(path: Path, count: int) -> Path:
    rng = random.Random(1)
    with path.open("w") as stream:
        for number, text in enumerate(texts(count), start=1):
            record = {"text": "" if number == EMPTY_LINE else text, "label": rng.choice(["negative", "positive"])}
            stream.write(json.dumps(record) + "\n")
    return path


def runner(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen:
    assert RUNNER.exists(), f"{RUNNER} missing: pip install -e . installs the intgrads-batch script"
    return subprocess.Popen([str(RUNNER), *map(str, args)], env=base_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]


def test_kill_9_midway_then_resume_ends_with_every_row_once(stack, tmp_path):
    _, frontend = stack
    source = write_jsonl(tmp_path / "reviews.jsonl", 200)
    out = tmp_path / "out"
    args = (source, "-o", out, "--server", frontend.url, "--label-field", "label", "--n-steps", "16",
            "--no-progress")
    first = runner(*args)
    try:
        wait_until(lambda: line_count(out / "rows.jsonl") >= 40 or first.poll() is not None, 180,
                   "40 rows from the first run")
    finally:
        first.send_signal(signal.SIGKILL)
        _, err = finish(first)
    written = line_count(out / "rows.jsonl")
    assert 40 <= written < 200, f"the runner was not killed mid-way ({written} rows):\n{err}"
    assert "concurrency 1" in err  # the server's one worker
    with (out / "rows.jsonl").open("ab") as stream:
        stream.write(b'{"id": 199, "text": "a row cut short by the crash", "tok')

    code, err = finish(runner(*args))
    assert code == 0, err
    assert "dropped a torn last line" in err and f"{written} already in" in err
    rows = read_rows(out)
    ids = [row["id"] for row in rows]
    assert len(rows) == 200 and len(set(ids)) == 200 and set(ids) == set(range(1, 201))
    failed = [row for row in rows if "error" in row]
    assert [row["id"] for row in failed] == [EMPTY_LINE]
    assert failed[0]["error"]["status"] == 400 and failed[0]["error"]["field"] == "sequence"
    for row in rows:
        if "error" not in row:
            assert len(row["tokens"]) == len(row["attributions"]) and row["steps_used"] == 16
            assert row["label"] in ("negative", "positive") and isinstance(row["correct"], bool)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["examples"], summary["ok"], summary["failed"]) == (200, 199, 1)
    assert summary["accuracy"]["labelled"] == 199 and summary["steps_used"]["counts"] == {"16": 199}
    assert summary["errors"] == {"400 bad_request": 1}
    report = (out / "report.html").read_text()
    assert "Accuracy against the labels" in report and "<script" not in report

    code, err = finish(runner(*args))  # a third run finds nothing to do
    assert code == 0 and "200 already in" in err and "0 to do" in err and len(read_rows(out)) == 200


def test_ctrl_c_cancels_the_request_in_flight_and_writes_nothing_partial(stack, tmp_path):
    broker, frontend = stack
    source = tmp_path / "slow.txt"
    source.write_text("a great film\nthe worst script ever\nSLOWMARK a long wait\nthe end\n")
    out = tmp_path / "out"
    cancelled_before = broker.status()["counters"].get("requests_cancelled", 0)
    process = runner(source, "-o", out, "--server", frontend.url, "--n-steps", "8", "--no-progress")
    try:
        wait_until(lambda: line_count(out / "rows.jsonl") == 2, 120, "the two quick rows")
        broker.busy_worker_pid(timeout=30)  # the worker sleeps on SLOWMARK
        process.send_signal(signal.SIGINT)
        code, err = finish(process, timeout=60)  # far less than the 600 s the request would take
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 130, err
    assert "interrupted: 2 rows written in this run, 1 request(s) cancelled; 2 of 4" in err
    assert [row["id"] for row in read_rows(out)] == [1, 2]
    assert not (out / "summary.json").exists() and not (out / "report.html").exists()
    wait_until(lambda: all(w["state"] == "idle" for w in broker.status()["workers"]), 60,
               "the worker to stop its cancelled request")
    assert broker.status()["counters"].get("requests_cancelled", 0) == cancelled_before + 1


def test_private_stack_with_tensors_csv_and_parquet(tiny_bert_dir, tmp_path):
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file

    source = tmp_path / "reviews.csv"
    lines = ["key,review"] + [f"r{i},\"{text}\"" for i, text in enumerate(texts(6, seed=5))]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    process = runner(source, "-o", out, "--model", tiny_bert_dir, "--text-field", "review", "--id-field", "key",
                     "--n-steps", "4", "--fields", "integrated_gradients", "--output-format", "parquet",
                     "--no-progress")
    seen: set[int] = set()
    while process.poll() is None:  # every process the runner starts, to check none outlives it
        seen.update(descendants(process.pid))
        time.sleep(0.05)
    code, err = finish(process)
    assert code == 0, err
    assert len(seen) >= 3, f"expected a broker, a worker and gunicorn below the runner, saw {seen}"
    assert kill_survivors(sorted(seen), grace=15) == [], "processes of the private stack outlived the runner"
    assert "starting a private server" in err and "stopping the private server" in err

    rows = read_rows(out)
    assert sorted(row["id"] for row in rows) == [f"r{i}" for i in range(6)]
    index = json.loads((out / "tensors" / "index.json").read_text())
    for row in rows:
        name = row["tensors"]["names"]["integrated_gradients"]
        assert index["weight_map"][name] == row["tensors"]["shard"]
        ig = load_file(out / "tensors" / row["tensors"]["shard"])[name]
        assert ig.shape == (1, len(row["tokens"]), 32)
        per_token = ig[0].astype("float64").sum(axis=-1)
        bound = 32 * EPS * float(abs(ig).max()) * 4
        assert max(abs(a - b) for a, b in zip(per_token, row["attributions"], strict=True)) <= bound
    table = pq.read_table(out / "rows.parquet")
    assert table.num_rows == 6 and sorted(table.column("id").to_pylist()) == [f"r{i}" for i in range(6)]
    assert json.loads((out / "summary.json").read_text())["ok"] == 6


NEW_OPTIONS = {"target": "all", "aggregate": "words", "metrics": ["comprehensiveness", "sufficiency", "log_odds"]}


def test_new_request_options_reach_rows_summary_and_report(stack, tmp_path):
    _, frontend = stack
    status, _, body = frontend.post("/model/?format=json", {"sequence": "a great film", "n_steps": 4, **NEW_OPTIONS})
    assert status == 200, body[:500]

    source = tmp_path / "few.txt"
    source.write_text("\n".join(texts(6, seed=9)) + "\n")
    out = tmp_path / "all"
    code, err = finish(runner(source, "-o", out, "--server", frontend.url, "--n-steps", "4", "--target", "all",
                              "--aggregate", "words", "--metrics", ",".join(NEW_OPTIONS["metrics"]),
                              "--no-progress"))
    assert code == 0, err
    rows = read_rows(out)
    assert len(rows) == 6
    for row in rows:
        assert row["target_label"] == ["negative", "positive"]
        assert len(row["attributions"]) == 2 and all(len(a) == len(row["tokens"]) for a in row["attributions"])
        assert len(row["word_attributions"]) == 2 and all(len(a) == len(row["words"]) for a in row["word_attributions"])
        assert len(row["metrics"]) == 2 and all("comprehensiveness" in m for m in row["metrics"])
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["metrics"]) == ["comprehensiveness", "log_odds", "sufficiency"]
    assert summary["metrics"]["sufficiency"]["count"] == 12  # 6 rows x 2 classes
    assert sorted(summary["metrics"]["log_odds"]["by_class"]) == ["negative", "positive"]
    assert summary["top"]["unit"] == "words" and sorted(summary["top"]["classes"]) == ["negative", "positive"]
    assert ">Faithfulness</h2>" in (out / "report.html").read_text()

    out = tmp_path / "contrast"
    code, err = finish(runner(source, "-o", out, "--server", frontend.url, "--n-steps", "4", "--target", "positive",
                              "--contrast", "negative", "--no-progress"))
    assert code == 0, err
    rows = read_rows(out)
    assert {row["contrast_label"] for row in rows} == {"negative"}
    assert list(json.loads((out / "summary.json").read_text())["top"]["classes"]) == ["positive vs negative"]


def test_bad_invocations_are_clear(stack, tmp_path):
    _, frontend = stack
    source = tmp_path / "x.jsonl"
    source.write_text('{"text": "a film"}\n{"text": "broken\n')
    code, err = finish(runner(source, "-o", tmp_path / "o", "--server", frontend.url))
    assert code == 1 and "x.jsonl:2: not valid JSON" in err
    source.write_text('{"text": "a film"}\n')
    code, err = finish(runner(source, "-o", tmp_path / "o", "--server", frontend.url, "--model", "nope"))
    assert code == 1 and "serves no model 'nope' (served: tiny)" in err
    code, err = finish(runner(source, "-o", tmp_path / "o", "--server", frontend.url, "--baseline", "plaid"))
    assert code == 1 and "refused the option 'baseline'" in err
    assert line_count(tmp_path / "o" / "rows.jsonl") == 0
    code, err = finish(runner(source, "-o", tmp_path / "o", "--server", frontend.url, "--baseline", "zero",
                              "--n-steps", "4"))
    assert code == 0, err  # no row was written: the folder takes the corrected options
    code, err = finish(runner(source, "-o", tmp_path / "o", "--server", frontend.url, "--baseline", "pad"))
    assert code == 1 and "other settings (baseline: 'zero' then, 'pad' now; n_steps: 4 then, None now)" in err
    code, err = finish(runner(source, "-o", tmp_path / "p"))
    assert code == 2 and "give --server URL" in err
    assert os.path.isdir(tmp_path / "o")
