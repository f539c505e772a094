"""The wire protocol refuses what does not follow it, and never unpickles."""

import pickle
import struct

import pytest

from intgrads_zmq.errors import BadRequest, IntgradsError, QueueFull
from intgrads_zmq.payload import RawTensor
from intgrads_zmq.service import protocol as p


def test_request_round_trip():
    frames = p.request_frames(p.CLIENT, "abc", p.RequestBody("m", "hi", {"n_steps": 3}, 5))
    message = p.parse(frames, p.CLIENT)
    assert message.command == p.Command.REQUEST and message.request_id == "abc"
    body = p.RequestBody.from_json(message.body[0])
    assert (body.model, body.sequence, body.options, body.timeout) == ("m", "hi", {"n_steps": 3}, 5.0)


def test_reply_round_trip_with_raw_tensors():
    data = struct.pack("<6f", *range(6))
    frames = p.reply_frames(p.WORKER, "r1", {"tokens": ["a"]}, {"x": RawTensor("float32", (2, 3), data)})
    message = p.parse(frames, p.WORKER)
    payload = p.parse_reply(message.body)
    assert payload.meta == {"tokens": ["a"]}
    assert payload.tensors["x"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_errors_cross_as_typed_data():
    frames = p.error_frames(p.CLIENT, "r", QueueFull("busy", retry_after=2))
    error = p.parse_error(p.parse(frames, p.CLIENT).body)
    assert isinstance(error, QueueFull) and error.status == 503 and error.retry_after == 2
    assert type(IntgradsError.from_dict({"code": "nonsense"})) is IntgradsError
    assert isinstance(IntgradsError.from_dict({"code": "bad_request", "field": "x"}), BadRequest)


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [p.CLIENT],
        [b"IGC9", p.Command.REQUEST.value, b"id", b"{}"],  # wrong version
        [p.CLIENT, b"\x7f", b"id"],  # unknown command
        [p.CLIENT, p.Command.REQUEST.value],  # no id
        [p.CLIENT, p.Command.REQUEST.value, b"id"],  # no body
        [p.CLIENT, p.Command.REQUEST.value, b"x" * 100, b"{}"],  # id too long
        [p.CLIENT, p.Command.REQUEST.value, b"\xff\xfe", b"{}"],  # id not ASCII
    ],
)
def test_malformed_envelopes_are_refused(frames):
    with pytest.raises(p.ProtocolError):
        p.parse(frames, p.CLIENT)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        pickle.dumps({"sequence": "x"}),  # a pickle is just bad JSON here
        b'{"sequence": 3}',
        b'{"sequence": "x", "options": []}',
        b'{"sequence": "x", "timeout": -1}',
        b'{"sequence": "x", "timeout": true}',
        b'{"sequence": "x", "model": ""}',
        b"{" * 100_000,
    ],
)
def test_malformed_request_bodies_are_refused(body):
    with pytest.raises(p.ProtocolError):
        p.RequestBody.from_json(body)


def test_replies_with_lying_tensor_headers_are_refused():
    good = struct.pack("<4f", 1, 2, 3, 4)
    head = p.dumps({"meta": {}, "tensors": [{"name": "x", "dtype": "float32", "shape": [2, 3]}]})
    with pytest.raises(p.ProtocolError, match="bytes"):
        p.parse_reply([head, good])
    head = p.dumps({"meta": {}, "tensors": [{"name": "x", "dtype": "object", "shape": [1]}]})
    with pytest.raises(p.ProtocolError):
        p.parse_reply([head, good])
    head = p.dumps({"meta": {}, "tensors": []})
    with pytest.raises(p.ProtocolError, match="frames"):
        p.parse_reply([head, good])


def test_oversized_json_is_refused_before_parsing():
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.loads(b" " * (p.MAX_JSON_BYTES + 1))


def test_worker_info_round_trips_and_only_its_model_name_is_strict():
    info = p.WorkerInfo("m", description={"architecture": "Bert"}, labels=["a", "b"], limits={"max_steps": 9},
                        defaults={"n_steps": 3}, pid=7, load_seconds=1.5)
    assert p.WorkerInfo.from_json(info.to_json()) == info
    odd = p.WorkerInfo.from_json(p.dumps({"model": "m", "load_seconds": "abc", "device": ["x"], "pid": True,
                                          "limits": {"nested": {"a": 1}, "max_steps": 5}, "labels": "ab"}))
    assert (odd.load_seconds, odd.device, odd.pid, odd.limits, odd.labels) == (0.0, None, None, {"max_steps": 5}, [])
    for bad in ({"labels": []}, {"model": ""}, {"model": "m" * 1000}, {"model": 3}):
        with pytest.raises(p.ProtocolError, match="READY needs a model name"):
            p.WorkerInfo.from_json(p.dumps(bad))


def test_load_failure_needs_a_model_and_a_reason():
    failure = p.LoadFailure("m", "OSError: gone")
    assert p.LoadFailure.from_json(failure.to_json()) == failure
    with pytest.raises(p.ProtocolError):
        p.LoadFailure.from_json(p.dumps({"model": "m"}))
    with pytest.raises(p.ProtocolError):
        p.LoadFailure.from_json(p.dumps({"error": "x"}))


def test_status_keeps_the_keys_frontends_read():
    model = p.ModelStatus(workers=0, idle=0, queued=1, labels=[], defaults={}, limits={"max_steps": 9},
                          description={"hidden": 8}, dtype=None, expected=True, load_error="gone")
    worker = p.WorkerStatus("w.1", "m", "idle", "cpu", "cores", "host", 3, 0, 1.0)
    status = p.BrokerStatus("m", {"m": model}, [worker], {"answered_ok": 2}, False)
    data = p.BrokerStatus.dict_from_json(status.to_json())
    assert set(data) == {"default_model", "models", "workers", "counters", "stopping", "jobs", "queue_bound"}
    assert set(data["models"]["m"]) == {"workers", "idle", "queued", "labels", "defaults", "limits", "model",
                                        "description", "dtype", "expected", "load_error", "draining"}
    assert data["models"]["m"]["model"] == {"hidden": 8}
    assert set(data["workers"][0]) == {"identity", "model", "state", "device", "placement", "host", "pid",
                                       "served", "up_seconds"}
    with pytest.raises(p.ProtocolError):
        p.BrokerStatus.dict_from_json(p.dumps({"models": [], "workers": [], "counters": {}}))


def test_cancel_and_progress_envelopes_carry_a_request_id_on_both_sides():
    for header in (p.CLIENT, p.WORKER):
        message = p.parse(p.envelope(header, p.Command.CANCEL, "r1"), header)
        assert (message.command, message.request_id, message.body) == (p.Command.CANCEL, "r1", [])
        with pytest.raises(p.ProtocolError, match="without a request id"):
            p.parse([header, p.Command.CANCEL.value], header)
        with pytest.raises(p.ProtocolError, match="missing frames"):
            p.parse(p.envelope(header, p.Command.PROGRESS, "r1"), header)
    for command in (p.Command.JOB_SUBMIT, p.Command.JOB_STATUS, p.Command.JOB_RESULT, p.Command.JOB_CANCEL):
        with pytest.raises(p.ProtocolError, match="missing frames"):
            p.parse(p.envelope(p.CLIENT, command, "r1"), p.CLIENT)


def test_progress_round_trips_and_refuses_what_a_reader_would_trip_on():
    progress = p.Progress("running", done=3, total=15, elapsed=1.25)
    assert p.Progress.from_json(progress.to_json()) == progress
    assert p.Progress.from_json(p.Progress("queued", position=2).to_json()).position == 2
    for bad in ({"state": "done"}, {"state": "running", "done": -1}, {"state": "running", "total": 1.5},
                {"state": "running", "done": True}, {"state": "running", "elapsed": "1"},
                {"state": "queued", "position": 2 ** 60}, {"state": "running", "elapsed": 1e300}):
        with pytest.raises(p.ProtocolError):
            p.Progress.from_json(p.dumps(bad))


def test_request_progress_flag_is_optional_and_strict():
    body = p.RequestBody("m", "hi", {}, 5, progress=True)
    assert p.RequestBody.from_json(body.to_json()).progress is True
    assert p.RequestBody.from_json(p.RequestBody("m", "hi", {}, 5).to_json()).progress is False
    assert b"progress" not in p.RequestBody("m", "hi", {}, 5).to_json()  # unchanged for old peers
    with pytest.raises(p.ProtocolError, match="progress"):
        p.RequestBody.from_json(p.dumps({"sequence": "x", "progress": "yes"}))


def test_job_ids_are_128_random_bits_and_job_queries_are_bounded():
    ids = {p.new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert p.JobQuery.from_json(p.JobQuery("abc").to_json()).job_id == "abc"
    for bad in ({}, {"job_id": ""}, {"job_id": "x" * 65}, {"job_id": 3}, {"job_id": "é"}):
        with pytest.raises(p.ProtocolError, match="job_id"):
            p.JobQuery.from_json(p.dumps(bad))


def test_job_state_round_trips_and_validates_its_fields():
    state = p.JobState("a" * 32, "failed", "m", done=2, total=8, created_at=1.7e9, started_at=1.7e9 + 1,
                       finished_at=1.7e9 + 2, expires_at=1.7e9 + 3602, error={"code": "compute_failed"})
    assert p.JobState.from_json(state.to_json()) == state
    for bad in ({"state": "lost"}, {"state": "done", "done": -3}, {"state": "done", "created_at": "now"},
                {"state": "done", "job_id": ""}):
        with pytest.raises(p.ProtocolError):
            p.JobState.from_json(p.dumps({**state.to_dict(), **bad}))


def test_drain_round_trips_on_both_sides_and_names_exactly_one_target():
    for target in (p.DrainTarget(model="tiny"), p.DrainTarget(worker="tiny-w0-ab12cd.1")):
        message = p.parse(p.drain_frames("d1", target), p.CLIENT)
        assert (message.command, message.request_id) == (p.Command.DRAIN, "d1")
        assert p.DrainTarget.from_json(message.body[0]) == target
    with pytest.raises(p.ProtocolError):  # a client's DRAIN needs its target
        p.parse(p.envelope(p.CLIENT, p.Command.DRAIN, "d1"), p.CLIENT)
    for bad in (b"{}", b'{"model": "m", "worker": "w.1"}', b'{"model": ""}', b'{"model": 3}',
                b'{"worker": ["w"]}', b'{"worker": ""}', b"[]", b'{"worker": "' + b"w" * 300 + b'"}'):
        with pytest.raises(p.ProtocolError):
            p.DrainTarget.from_json(bad)
    reply = p.parse(p.envelope(p.CLIENT, p.Command.DRAIN_REPLY, "d1") + [p.DrainReply(["a.1", "b.1"]).to_json()],
                    p.CLIENT)
    assert p.DrainReply.from_json(reply.body[0]).to_dict() == {"workers": ["a.1", "b.1"], "count": 2}
    for bad in (b"{}", b'{"workers": [1]}', b'{"workers": "a.1"}'):
        with pytest.raises(p.ProtocolError):
            p.DrainReply.from_json(bad)
    # Between broker and worker DRAIN is bare, in both directions, with no request id.
    message = p.parse(p.envelope(p.WORKER, p.Command.DRAIN), p.WORKER)
    assert (message.command, message.request_id, list(message.body)) == (p.Command.DRAIN, None, [])


def test_worker_status_can_say_draining_and_models_count_draining_workers():
    status = p.ModelStatus(workers=2, idle=0, queued=3, labels=[], defaults={}, limits={}, description={},
                           dtype=None, expected=True, load_error=None, draining=1)
    assert status.to_dict()["draining"] == 1
