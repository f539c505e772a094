"""Resume bookkeeping of intgrads-batch's output folder: what is done, what a
crash left behind (torn rows, orphan shards), which settings must match, and
the lock that keeps two runners out of one folder."""

from __future__ import annotations

import json

import pytest

from intgrads_zmq.batch.journal import Journal, encode_row, recover
from intgrads_zmq.batch.resume import (
    MANIFEST,
    ROWS,
    TENSORS,
    OutputError,
    clear_results,
    manifest,
    open_output,
)
from intgrads_zmq.batch.shards import ShardWriter, refs_from_rows
from intgrads_zmq.payload import RawTensor


def run_manifest(tmp_path, **options):
    return manifest(input_path=tmp_path / "in.jsonl", input_format="jsonl", text_field="text",
                    label_field=None, id_field=None,
                    request={"options": {"n_steps": 8, **options}, "fields": [], "model": "tiny"},
                    output_format="jsonl")


def ok(i):
    return {"id": i, "text": f"t{i}", "attributions": [0.1]}


def failed(i):
    return {"id": i, "text": "", "error": {"status": 400, "code": "bad_request"}}


def test_fresh_folder_then_resume(tmp_path):
    out = tmp_path / "out"
    state = open_output(out, run_manifest(tmp_path))
    assert state.rows == [] and not state.resumed and state.done == set()
    assert json.loads((out / MANIFEST).read_text())["request"]["options"] == {"n_steps": 8}
    with Journal(out / ROWS) as journal:
        journal.append([ok(1), failed(2), ok("x")])
    state.release()
    with (out / ROWS).open("ab") as stream:
        stream.write(b'{"id": 4, "te')  # a kill -9 mid-write
    state = open_output(out, run_manifest(tmp_path))
    try:
        assert state.resumed and state.done == {"1", "2", "x"}
        assert state.dropped_bytes == len(b'{"id": 4, "te') and state.dropped_lines == 1
        assert len(recover(out / ROWS).rows) == 3
    finally:
        state.release()


def test_different_settings_are_refused_with_the_differences(tmp_path):
    out = tmp_path / "out"
    open_output(out, run_manifest(tmp_path)).release()
    open_output(out, run_manifest(tmp_path, n_steps=4)).release()  # no row yet: new settings taken
    assert json.loads((out / MANIFEST).read_text())["request"]["options"] == {"n_steps": 4}
    open_output(out, run_manifest(tmp_path)).release()
    with Journal(out / ROWS) as journal:
        journal.append([ok(1)])
    with pytest.raises(OutputError, match=r"baseline: None then, 'zero' now; n_steps: 8 then, 16 now"):
        open_output(out, run_manifest(tmp_path, n_steps=16, baseline="zero"))
    other = run_manifest(tmp_path)
    other["request"]["model"] = "big"
    with pytest.raises(OutputError, match="model: 'tiny' then, 'big' now"):
        open_output(out, other)
    other = run_manifest(tmp_path)
    other["id_field"] = "key"
    with pytest.raises(OutputError, match="id_field: None then, 'key' now"):
        open_output(out, other)
    # the same settings from another copy of the input file may continue
    moved = run_manifest(tmp_path)
    moved["input"] = "/elsewhere/in.jsonl"
    open_output(out, moved).release()
    assert "/elsewhere/in.jsonl" in json.loads((out / MANIFEST).read_text())["inputs_seen"]


def test_rows_without_a_manifest_are_not_ours(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ROWS).write_bytes(encode_row(ok(1)))
    with pytest.raises(OutputError, match="not a folder this tool made"):
        open_output(out, run_manifest(tmp_path))


def test_one_runner_per_folder(tmp_path):
    out = tmp_path / "out"
    first = open_output(out, run_manifest(tmp_path))
    try:
        with pytest.raises(OutputError, match=r"another intgrads-batch is writing here \(pid \d+\)"):
            open_output(out, run_manifest(tmp_path))
    finally:
        first.release()
    open_output(out, run_manifest(tmp_path)).release()  # free again


def test_retry_failed_and_duplicates_rewrite_the_journal(tmp_path):
    out = tmp_path / "out"
    open_output(out, run_manifest(tmp_path)).release()
    with Journal(out / ROWS) as journal:
        journal.append([ok(1), failed(2), ok(3), {**ok(1), "text": "second copy"}])
    state = open_output(out, run_manifest(tmp_path))
    state.release()
    assert state.duplicates == 1 and state.done == {"1", "2", "3"}
    assert [r["text"] for r in recover(out / ROWS).rows] == ["t1", "", "t3"]  # the first copy is kept
    state = open_output(out, run_manifest(tmp_path), retry_failed=True)
    state.release()
    assert state.retried == 1 and state.done == {"1", "3"}
    assert [r["id"] for r in recover(out / ROWS).rows] == [1, 3]


def test_orphan_shards_and_temporary_files_are_removed(tmp_path):
    out = tmp_path / "out"
    open_output(out, run_manifest(tmp_path)).release()
    writer = ShardWriter(out / TENSORS)
    tensor = RawTensor("float32", (1, 2), b"\x00" * 8)
    names = writer.add(1, {"integrated_gradients": tensor})
    kept = writer.flush()
    writer.add(2, {"integrated_gradients": tensor})
    orphan = writer.flush()  # written, but the crash came before its rows
    (out / TENSORS / "shard-00009.safetensors.tmp").write_bytes(b"partial")
    with Journal(out / ROWS) as journal:
        journal.append([{**ok(1), "tensors": {"shard": kept, "names": names}}])
    state = open_output(out, run_manifest(tmp_path))
    state.release()
    assert sorted(state.removed_files) == [orphan, "shard-00009.safetensors.tmp"]
    assert sorted(p.name for p in (out / TENSORS).iterdir()) == [kept]
    refs = refs_from_rows(state.rows)
    assert refs == {"1/integrated_gradients": kept}
    resumed = ShardWriter(out / TENSORS, refs)
    resumed.add(2, {"integrated_gradients": tensor})
    assert resumed.flush() == "shard-00002.safetensors"  # numbering continues after the kept shard


def test_clear_results(tmp_path):
    for name in ("summary.json", "report.html", "rows.parquet", "rows.jsonl"):
        (tmp_path / name).write_text("x")
    clear_results(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
