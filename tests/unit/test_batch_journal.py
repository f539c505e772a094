"""The journal (rows.jsonl): whole-line appends, torn-tail recovery, and a real
SIGKILL of a process that is appending, after which only whole rows remain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from intgrads_zmq.batch.journal import Journal, JournalCorrupt, encode_row, recover, rewrite
from intgrads_zmq.testing.stack import REPO, base_env


def rows(n, start=0):
    return [{"id": i, "text": f"example {i}", "attributions": [0.5, -0.25]} for i in range(start, start + n)]


def test_append_then_recover_round_trip(tmp_path):
    path = tmp_path / "rows.jsonl"
    with Journal(path) as journal:
        journal.append(rows(2))
        journal.append([])
        journal.append(rows(3, start=2))
    data = path.read_bytes()
    assert data.count(b"\n") == 5 and data.endswith(b"\n")
    recovered = recover(path)
    assert [r["id"] for r in recovered.rows] == [0, 1, 2, 3, 4] and recovered.dropped_bytes == 0
    assert path.read_bytes() == data
    assert recover(tmp_path / "missing.jsonl").rows == []


def test_non_ascii_text_stays_one_line():
    line = encode_row({"id": "é\u2028", "text": "line\nbreak \u2029 ✓"})
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert json.loads(line)["text"] == "line\nbreak \u2029 ✓"
    with pytest.raises(ValueError):
        encode_row({"id": 1, "x": float("nan")})


@pytest.mark.parametrize("tail", [
    b'{"id": 9, "text": "cut sho',          # no newline: the write was cut short
    b'{"id": 9, "te\n',                       # a newline but not a row
    b"\x00\x00\x00\x00\x00\x00\n\x00\x00",    # zero-filled blocks after a power loss
    b"\n\n",                                  # blank lines only
])
def test_a_torn_tail_is_dropped_from_the_file(tmp_path, tail):
    path = tmp_path / "rows.jsonl"
    with Journal(path) as journal:
        journal.append(rows(3))
    whole = path.read_bytes()
    with path.open("ab") as stream:
        stream.write(tail)
    recovered = recover(path)
    assert [r["id"] for r in recovered.rows] == [0, 1, 2]
    assert recovered.dropped_bytes == len(tail)
    assert path.read_bytes() == whole  # truncated back to the last whole line
    with Journal(path) as journal:  # appending after recovery gives whole lines again
        journal.append(rows(1, start=3))
    assert [r["id"] for r in recover(path).rows] == [0, 1, 2, 3]


def test_a_bad_line_before_good_ones_is_not_a_torn_write(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(encode_row(rows(1)[0]) + b"garbage\n" + encode_row(rows(1, start=1)[0]))
    with pytest.raises(JournalCorrupt, match="line 2 is not a row but line 3 after it is"):
        recover(path)
    path.write_bytes(encode_row(rows(1)[0]) + b'{"no_id": 1}\n' + encode_row(rows(1, start=1)[0]))
    with pytest.raises(JournalCorrupt):
        recover(path)


def test_rewrite_replaces_atomically(tmp_path):
    path = tmp_path / "rows.jsonl"
    with Journal(path) as journal:
        journal.append(rows(4))
    rewrite(path, rows(2))
    assert [r["id"] for r in recover(path).rows] == [0, 1]
    assert not (tmp_path / "rows.jsonl.tmp").exists()


WRITER = """
import sys
from intgrads_zmq.batch.journal import Journal
journal = Journal(sys.argv[1])
i = 0
while True:
    journal.append([{"id": i, "text": "x" * 5000, "n": i}, {"id": i + 1, "text": "y" * 3000, "n": i + 1}])
    i += 2
"""


def test_sigkill_while_appending_leaves_only_whole_rows(tmp_path):
    """A real process appends rows as fast as it can and is killed with SIGKILL;
    every row recovered is whole, ids are consecutive from 0, and appending goes on."""
    path = tmp_path / "rows.jsonl"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, env=base_env())
    try:
        deadline = time.monotonic() + 60
        while (not path.exists() or path.stat().st_size < 200_000) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    recovered = recover(path)
    ids = [r["id"] for r in recovered.rows]
    assert len(ids) >= 20 and ids == list(range(len(ids)))
    assert all(len(r["text"]) in (5000, 3000) for r in recovered.rows)
    with Journal(path) as journal:
        journal.append([{"id": len(ids)}])
    assert [r["id"] for r in recover(path).rows] == [*ids, len(ids)]
