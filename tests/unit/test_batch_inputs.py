"""intgrads-batch input readers: JSONL, CSV/TSV and text files, their fields and
ids, and the clear errors a broken file gets (file and line named)."""

from __future__ import annotations

import json

import pytest

from intgrads_zmq.batch.inputs import InputError, detect_format, read_examples
from intgrads_zmq.batch.request import OptionError, build_request


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_jsonl_fields_labels_and_line_number_ids(tmp_path):
    path = write(tmp_path / "d.jsonl", "\n".join([
        json.dumps({"review": "a great film", "y": "positive"}),
        "",  # blank lines are skipped, ids stay line numbers
        json.dumps({"review": "a dull film", "y": 0}),
        json.dumps({"review": "no label here"}),
    ]) + "\n")
    examples = read_examples(path, text_field="review", label_field="y")
    assert [(e.id, e.text, e.label) for e in examples] == [
        (1, "a great film", "positive"), (3, "a dull film", 0), (4, "no label here", None)]


def test_jsonl_id_field_and_empty_text_is_kept(tmp_path):
    path = write(tmp_path / "d.ndjson", '{"text": "", "key": "b-7"}\n{"text": "x", "key": 12}\n')
    examples = read_examples(path, id_field="key")
    assert [(e.id, e.text) for e in examples] == [("b-7", ""), (12, "x")]
    assert [e.key for e in examples] == ["b-7", "12"]


@pytest.mark.parametrize("content,message", [
    ('{"text": "ok"}\n{"text": "broken\n', "d.jsonl:2: not valid JSON"),
    ('["a list"]\n', "d.jsonl:1: expected a JSON object, got list"),
    ('{"body": "x"}\n', "d.jsonl:1: no field 'text' (fields: body)"),
    ('{"text": null}\n', "d.jsonl:1: field 'text' must be a string, got null"),
    ('{"text": 5}\n', "must be a string, got int"),
    ("\n\n", "no examples"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    path = write(tmp_path / "d.jsonl", content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_examples(path)


def test_jsonl_bad_ids_and_labels(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "id": 1}\n{"text": "b", "id": "1"}\n')
    with pytest.raises(InputError, match=r"d.jsonl:2: id '1' is used twice \(first on line 1\)"):
        read_examples(path, id_field="id")
    path = write(tmp_path / "e.jsonl", '{"text": "a"}\n')
    with pytest.raises(InputError, match="e.jsonl:1: no value for the id field 'id'"):
        read_examples(path, id_field="id")
    path = write(tmp_path / "f.jsonl", '{"text": "a", "id": 1.5}\n')
    with pytest.raises(InputError, match="id field 'id' must be a non-empty string or an integer, got float"):
        read_examples(path, id_field="id")
    path = write(tmp_path / "g.jsonl", '{"text": "a", "y": true}\n')
    with pytest.raises(InputError, match="label field 'y'"):
        read_examples(path, label_field="y")


def test_csv_columns_row_numbers_quotes_and_bom(tmp_path):
    path = write(tmp_path / "d.csv", '\ufefftext,label,extra\n"a film, with a comma",positive,1\n'
                 '"two\nlines",negative,2\nplain,,3\n')
    examples = read_examples(path, label_field="label")
    assert [(e.id, e.text, e.label, e.line) for e in examples] == [
        (1, "a film, with a comma", "positive", 2), (2, "two\nlines", "negative", 3), (3, "plain", None, 5)]


def test_csv_id_column_and_tsv(tmp_path):
    path = write(tmp_path / "d.tsv", "id\ttext\nr1\thello there\nr2\tgood bye\n")
    assert [(e.id, e.text) for e in read_examples(path, id_field="id")] == [("r1", "hello there"), ("r2", "good bye")]
    path = write(tmp_path / "data.tab", "text\nhello\n")
    assert [e.text for e in read_examples(path, fmt="tsv")] == ["hello"]


@pytest.mark.parametrize("content,kwargs,message", [
    ("body,label\nx,y\n", {}, "no column 'text' for the text (columns: body, label)"),
    ("text\nx\n", {"label_field": "y"}, "no column 'y' for the label"),
    ("", {}, "empty file"),
    ("text,id\nx,\n", {"id_field": "id"}, "d.csv:2: row 1 has no value for the id column 'id'"),
    ("text,id\nx,a\ny,a\n", {"id_field": "id"}, "d.csv:3: id 'a' is used twice"),
    ("id,text\n7\n", {}, "d.csv:2: row 1 has no value for 'text'"),
])
def test_csv_errors(tmp_path, content, kwargs, message):
    path = write(tmp_path / "d.csv", content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_examples(path, **kwargs)


def test_text_file_one_example_per_line(tmp_path):
    path = write(tmp_path / "d.txt", "first line\r\n\n   \n  second, with spaces  \nlast")
    examples = read_examples(path)
    assert [(e.id, e.text) for e in examples] == [(1, "first line"), (4, "  second, with spaces  "), (5, "last")]
    with pytest.raises(InputError, match="a text file has one text per line and no fields"):
        read_examples(path, label_field="label")


def test_format_detection_and_encoding_errors(tmp_path):
    assert detect_format(tmp_path / "x.JSONL") == "jsonl"
    with pytest.raises(InputError, match=r"cannot tell the format from the extension '\.parquet'.*--input-format"):
        detect_format(tmp_path / "x.parquet")
    with pytest.raises(InputError, match="unknown input format 'xml'"):
        detect_format(tmp_path / "x.txt", "xml")
    path = write(tmp_path / "latin.txt", "caf\xe9\n", encoding="latin-1")
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_examples(path)
    with pytest.raises(InputError, match="no such file"):
        read_examples(tmp_path / "missing.txt")


def test_request_options_take_the_servers_shapes():
    spec = build_request(target="all", aggregate="words", metrics="comprehensiveness, log_odds",
                         n_steps="auto", tolerance=0.02, baseline="mask", fields="integrated_gradients",
                         model="tiny")
    assert spec.options == {"target": "all", "aggregate": "words", "metrics": ["comprehensiveness", "log_odds"],
                            "n_steps": "auto", "tolerance": 0.02, "baseline": "mask"}
    assert spec.format == "safetensors" and spec.fields == ("integrated_gradients",)
    assert spec.body("hi") == {"sequence": "hi", **spec.options, "fields": ["integrated_gradients"]}
    spec = build_request(target="1", contrast="negative", n_steps="16")
    assert spec.options == {"target": 1, "contrast": "negative", "n_steps": 16}
    assert spec.format == "json" and spec.body("x")["fields"] == []
    assert build_request().options == {}


@pytest.mark.parametrize("kwargs,message", [
    ({"n_steps": "0"}, "--n-steps must be a positive integer or 'auto'"),
    ({"n_steps": "many"}, "--n-steps"),
    ({"metrics": "speed"}, "--metrics takes"),
    ({"fields": "integrated_gradients,gradients"}, "unknown: gradients"),
    ({"aggregate": "sentences"}, "--aggregate must be one of"),
    ({"target": " "}, "--target is empty"),
])
def test_request_option_errors(kwargs, message):
    with pytest.raises(OptionError, match=message):
        build_request(**kwargs)
