"""The plumbing of issue 14's options inside a worker, in process:

* what ``aggregate: "words"`` and ``metrics`` hand to the word and
  faithfulness modules (recorded by stand-ins installed in their place:
  these tests are about the calls and the reply's shape, not the two
  modules' own results, which their own tests and tests/stack check), and
  a build without them refusing the option with a 400 naming it;
* the worker's :class:`Computer` (real engine, real tiny model) enforcing its
  own limits whatever a frontend checked: the sequence length before any
  tokenising, ``max_target_classes``, and a model without a mask token.
"""

from __future__ import annotations

import sys
import time
import types
from typing import Any

import pytest
import torch

from intgrads_zmq.engine import attribute
from intgrads_zmq.errors import BadRequest, IntgradsError
from intgrads_zmq.options import AttributionOptions
from intgrads_zmq.payload import AttributionPayload
from intgrads_zmq.service import protocol as p
from intgrads_zmq.service.worker import Computer, Job, WorkerConfig

TEXT = "a great film , not boring !"


class Recorder:
    """Stand-ins for ``aggregate_words`` and ``faithfulness`` that keep their arguments."""

    def __init__(self) -> None:
        self.words: list[tuple[Any, ...]] = []
        self.faithfulness: list[dict[str, Any]] = []

    def aggregate_words(self, adapter, text, encoded, scores):
        self.words.append((adapter, text, encoded, scores.clone()))
        per_token = scores.tolist()
        return {"words": list(encoded.tokens), "word_attributions": per_token,
                "word_spans": [None] * encoded.length, "ignored": True}

    def faithfulness_call(self, adapter, encoded, token_scores, target, contrast, metrics, *, dtype, planner):
        self.faithfulness.append({"scores": token_scores.clone(), "target": target, "contrast": contrast,
                                  "metrics": list(metrics), "dtype": dtype, "planner": planner})
        return {name: 0.5 for name in metrics} | {"target": target, "seconds": 0.25}


@pytest.fixture
def recorder(monkeypatch):
    record = Recorder()
    words = types.ModuleType("intgrads_zmq.models.words")
    words.aggregate_words = record.aggregate_words
    faith = types.ModuleType("intgrads_zmq.engine.faithfulness")
    faith.faithfulness = record.faithfulness_call
    monkeypatch.setitem(sys.modules, "intgrads_zmq.models.words", words)
    monkeypatch.setitem(sys.modules, "intgrads_zmq.engine.faithfulness", faith)
    return record


def test_words_get_the_per_token_scores_and_the_reply_their_three_keys(tiny_bert, recorder):
    result = attribute(tiny_bert, TEXT, AttributionOptions(n_steps=4, target=1, aggregate="words"))
    ((adapter, text, encoded, scores),) = recorder.words
    assert adapter is tiny_bert and text == TEXT and encoded.tokens == result.meta["tokens"]
    assert scores.shape == (len(result.meta["tokens"]),) and scores.dtype == torch.float64
    assert scores.tolist() == result.meta["attributions"]
    assert result.meta["words"] == result.meta["tokens"] and result.meta["aggregate"] == "words"
    assert result.meta["word_attributions"] == result.meta["attributions"]
    assert "ignored" not in result.meta and "word_spans" in result.meta


def test_words_with_all_get_a_class_axis(tiny_bert, recorder):
    result = attribute(tiny_bert, TEXT, AttributionOptions(n_steps=4, target="all", aggregate="words"))
    scores = recorder.words[0][3]
    assert scores.shape == (2, len(result.meta["tokens"]))
    assert result.meta["word_attributions"] == result.meta["attributions"]  # one list per class


def test_no_words_unless_asked(tiny_bert, recorder):
    meta = attribute(tiny_bert, TEXT, AttributionOptions(n_steps=4)).meta
    assert recorder.words == [] and recorder.faithfulness == []
    assert "words" not in meta and "metrics" not in meta and "metrics_seconds" not in meta["timings"]


def test_metrics_are_called_per_function_with_its_scores(tiny_bert, recorder):
    options = AttributionOptions(n_steps=4, target=1, contrast=0, metrics=("sufficiency", "log_odds"))
    result = attribute(tiny_bert, TEXT, options, dtype="float32")
    (call,) = recorder.faithfulness
    assert call["target"] == 1 and call["contrast"] == 0 and call["metrics"] == ["sufficiency", "log_odds"]
    assert call["scores"].shape == (len(result.meta["tokens"]),)
    assert call["scores"].tolist() == result.meta["attributions"] and call["dtype"] == "float32"
    # the time goes to timings only: the same request gives the same reply bytes
    assert result.meta["metrics"] == {"sufficiency": 0.5, "log_odds": 0.5, "target": 1}
    assert result.meta["timings"]["metrics_seconds"] == 0.25


def test_metrics_with_all_are_one_result_per_class(tiny_bert, recorder):
    result = attribute(tiny_bert, TEXT, AttributionOptions(n_steps=4, target="all", metrics=("comprehensiveness",)))
    assert [c["target"] for c in recorder.faithfulness] == [0, 1]
    assert all(c["contrast"] is None for c in recorder.faithfulness)
    for row, call in enumerate(recorder.faithfulness):
        assert call["scores"].tolist() == result.meta["attributions"][row]
    assert [m["target"] for m in result.meta["metrics"]] == [0, 1]
    assert result.meta["timings"]["metrics_seconds"] == 0.5


@pytest.mark.parametrize("module, options, field", [
    ("intgrads_zmq.models.words", {"aggregate": "words"}, "aggregate"),
    ("intgrads_zmq.engine.faithfulness", {"metrics": ("sufficiency",)}, "metrics"),
])  # fmt: skip
def test_a_build_without_the_module_refuses_the_option(tiny_bert, monkeypatch, module, options, field):
    monkeypatch.setitem(sys.modules, module, None)  # import of it fails as a missing module does
    with pytest.raises(BadRequest) as caught:
        attribute(tiny_bert, TEXT, AttributionOptions(n_steps=2, **options))
    assert caught.value.field == field and "not available" in caught.value.description


# -- the worker's own checks ---------------------------------------------------------


def answer(computer: Computer, sequence: str, options: dict[str, Any]) -> AttributionPayload | IntgradsError:
    job = Job("r-1", p.RequestBody(None, sequence, options, 60.0), time.monotonic() + 60)
    message = p.parse(computer.handle(job), p.WORKER)
    if message.command == p.Command.ERROR:
        return p.parse_error(message.body)
    return p.parse_reply(message.body)


class CountingAdapter:
    """The real adapter, with a count of the texts it was asked to tokenise."""

    def __init__(self, adapter: Any) -> None:
        self._adapter = adapter
        self.encoded: list[int] = []

    def encode(self, text: str, max_length: int) -> Any:
        self.encoded.append(len(text))
        return self._adapter.encode(text, max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)


def test_the_worker_refuses_a_text_over_its_limit_before_tokenising(tiny_bert):
    adapter = CountingAdapter(tiny_bert)
    computer = Computer(adapter, WorkerConfig(connect="inproc://unused", limits={"max_sequence_chars": 500}))
    refused = answer(computer, "great " * 100, {"n_steps": 2})
    assert isinstance(refused, BadRequest) and refused.field == "sequence" and refused.code == "bad_request"
    assert "500" in refused.description and adapter.encoded == []
    served = answer(computer, TEXT, {"n_steps": 2})
    assert isinstance(served, AttributionPayload) and adapter.encoded == [len(TEXT)]


def test_the_worker_checks_every_option_and_its_class_limit(tiny_bert):
    computer = Computer(tiny_bert, WorkerConfig(connect="inproc://unused", limits={"max_target_classes": 1}))
    refused = answer(computer, TEXT, {"n_steps": 2, "target": "all"})
    assert isinstance(refused, BadRequest) and refused.field == "target" and "at most 1" in refused.description
    for options, field in [({"metrics": ["sufficiency", "sufficiency"]}, "metrics"),
                           ({"aggregate": "letters"}, "aggregate"), ({"contrast": 7}, "contrast"),
                           ({"target": 1, "contrast": "positive"}, "contrast")]:  # fmt: skip
        error = answer(computer, TEXT, {"n_steps": 2, **options})
        assert isinstance(error, BadRequest) and error.field == field, (options, error)
    wide = Computer(tiny_bert, WorkerConfig(connect="inproc://unused", limits={"max_target_classes": 2}))
    reply = answer(wide, TEXT, {"n_steps": 3, "target": "all", "fields": ["integrated_gradients"]})
    assert isinstance(reply, AttributionPayload)
    tokens = len(reply.meta["tokens"])
    assert reply.tensors["integrated_gradients"].shape == (2, 1, tokens, 32)
    assert reply.meta["target"] == [0, 1] and len(reply.meta["f_input"]) == 2


def test_the_worker_bounds_what_all_keeps_per_class(tiny_bert):
    """"all" keeping every class's per-step gradients may not pass what one target
    may keep at the worker's limits (max_steps x max_length token-steps)."""
    computer = Computer(tiny_bert, WorkerConfig(connect="inproc://unused", limits={"max_steps": 20, "max_length": 16}))
    tokens = len(tiny_bert.encode(TEXT, 16).tokens)
    assert 2 * 20 * tokens > 20 * 16 >= 2 * 12 * tokens
    refused = answer(computer, TEXT, {"n_steps": 20, "target": "all"})
    assert isinstance(refused, BadRequest) and refused.field == "fields"
    assert "intermediate_gradients" in refused.description
    for options in ({"n_steps": 12, "target": "all"}, {"n_steps": 20, "target": "all", "fields": ["integrated_gradients"]},
                    {"n_steps": 20, "target": 1}, {"n_steps": "auto", "target": "all", "fields": []}):  # fmt: skip
        assert isinstance(answer(computer, TEXT, options), AttributionPayload), options
    refused = answer(computer, TEXT, {"n_steps": "auto", "target": "all"})  # auto counts its step budget
    assert isinstance(refused, BadRequest) and refused.field == "fields"


def test_the_worker_answers_400_for_a_mask_baseline_without_a_mask_token(tiny_bert_dir):
    from intgrads_zmq.models.loader import load_model
    from intgrads_zmq.models.spec import ModelSpec

    adapter = load_model(ModelSpec(kind="hf", path=str(tiny_bert_dir), name="no-mask"), torch.device("cpu"))
    adapter.tokenizer.mask_token = None
    computer = Computer(adapter, WorkerConfig(connect="inproc://unused"))
    error = answer(computer, TEXT, {"n_steps": 2, "baseline": "mask"})
    assert isinstance(error, BadRequest) and error.field == "baseline" and error.status == 400
    assert "no mask token" in error.description
    # ... and /models (the worker's READY) does not offer it for this model
    from intgrads_zmq.service.worker import describe_worker

    offered = describe_worker(WorkerConfig(connect="inproc://unused"), adapter, 0.0).capabilities["baselines"]
    assert "mask" not in offered and {"pad", "unk", "zero"} <= set(offered)


def test_the_real_modules_with_all_words_and_metrics(tiny_bert):
    """The words and faithfulness modules themselves behind the plumbing: each
    class's word scores sum back to its token scores; one metrics result per class."""
    options = AttributionOptions(n_steps=4, target="all", aggregate="words",
                                 metrics=("comprehensiveness", "sufficiency", "log_odds"))  # fmt: skip
    meta = attribute(tiny_bert, TEXT, options).meta
    words, spans = meta["words"], meta["word_spans"]
    assert len(words) == len(spans) and spans[0] is None and spans[-1] is None  # [CLS], [SEP]
    for row in range(2):
        assert len(meta["word_attributions"][row]) == len(words)
        assert sum(meta["word_attributions"][row]) == pytest.approx(sum(meta["attributions"][row]), rel=1e-9,
                                                                    abs=1e-12)  # fmt: skip
    for span, word in zip(spans, words, strict=True):
        if span is not None:
            assert TEXT[span[0]:span[1]] == word
    assert [m["target"] for m in meta["metrics"]] == [0, 1]
    assert all({"comprehensiveness", "sufficiency", "log_odds"} <= set(m) for m in meta["metrics"])
    assert meta["timings"]["metrics_seconds"] > 0 and all("seconds" not in m for m in meta["metrics"])
