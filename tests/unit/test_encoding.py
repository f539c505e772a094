"""Response encoders, checked against the real readers: torch, safetensors, json."""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch

from intgrads_zmq.encoding import (
    DEFAULT_FORMAT,
    FORMATS,
    encode,
    negotiate,
    torchsave,
    write_safetensors,
    write_torch_save,
)
from intgrads_zmq.encoding import formats as formats_module
from intgrads_zmq.errors import BadRequest
from intgrads_zmq.payload import AttributionPayload, RawTensor

REPO = Path(__file__).resolve().parents[2]
DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
]
SHAPES = [(), (0,), (2, 0, 3), (3, 0), (7,), (3, 4), (2, 3, 4)]


# --- helpers -----------------------------------------------------------------


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 100).to(dtype)
    return torch.randint(0, 200, shape, generator=gen).to(dtype)


def to_raw(obj: Any) -> Any:
    """The same tree with every tensor turned into a RawTensor."""
    if isinstance(obj, torch.Tensor):
        dtype = str(obj.dtype).removeprefix("torch.")
        return RawTensor(dtype, tuple(obj.shape), obj.contiguous().numpy().tobytes())
    if isinstance(obj, dict):
        return {k: to_raw(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_raw(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_raw(v) for v in obj)
    return obj


def torch_round_trip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()))


def assert_same(got: Any, want: Any, path: str = "root") -> None:
    """Deep equality that checks types, dict key order, dtypes, strides, NaN."""
    assert type(got) is type(want), f"{path}: {type(got)} != {type(want)}"
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype, path
        assert got.shape == want.shape, path
        assert got.stride() == want.stride(), path
        assert got.requires_grad == want.requires_grad, path
        assert got.numpy().tobytes() == want.numpy().tobytes(), path
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{path}: key order"
        for key in want:
            assert_same(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), path
    elif isinstance(want, float):
        assert got == want and math.copysign(1, got) == math.copysign(1, want), path
    else:
        assert got == want, path


def check_like_torch_save(obj: Any) -> bytes:
    data = write_torch_save(to_raw(obj))
    assert_same(torch.load(io.BytesIO(data), weights_only=True), torch_round_trip(obj))
    return data


@pytest.fixture
def payload() -> AttributionPayload:
    steps, tokens, hidden = 5, 6, 8
    tensors = {
        # deliberately not in the canonical order
        "step_sizes": sample(torch.float32, (steps,), 1),
        "intermediates": sample(torch.float32, (steps, 1, tokens, hidden), 2),
        "integrated_gradients": sample(torch.float32, (1, tokens, hidden), 3),
        "intermediate_gradients": sample(torch.float32, (steps, 1, tokens, hidden), 4),
    }
    meta = {
        "model": "bert",
        "tokens": ["[CLS]", "caf\u00e9", "\u2603", "\U0001f600", "!", "[SEP]"],
        "labels": ["negative", "positive"],
        "probabilities": [0.25, 0.75],
        "target": 1,
        "target_label": "positive",
        "f_input": 0.75,
        "f_baseline": 0.5,
        "completeness_error": float("nan"),
        "truncated": False,
        "n_steps": steps,
        "method": "riemann_trapezoid",
        "baseline": "zero",
        "seed": None,
        "dtype": "float32",
        "attributions": [0.1, -0.2, float("inf"), 0.0, -0.0, 1e-300],
        "alphas": [0.0, 0.25, 0.5, 0.75, 1.0],
        "path_integrand": [1.0, 2.0, 3.0, 4.0, 5.0],
        "timings": {"queue": 0.001, "compute": 1.5},
        # what n_steps "auto" reports: carried by the torch reply too
        "requested_steps": "auto",
        "nodes_used": steps,
        "tolerance": 0.01,
        "error_estimate": 0.004,
        "completeness": 0.001,
        "converged": True,
    }
    return AttributionPayload(meta=meta, tensors={k: to_raw(v) for k, v in tensors.items()})


def expected_torch_dict(payload: AttributionPayload) -> dict[str, Any]:
    """The dict the original server would have torch.save'd for this payload."""
    result: dict[str, Any] = {}
    for name in ("integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates"):
        raw = payload.tensors[name]
        result[name] = torch.frombuffer(bytearray(raw.data), dtype=torch.float32).reshape(raw.shape)
    for key in formats_module.TORCH_META_KEYS:
        if key in payload.meta:  # optional keys (contrast, words, metrics) only when present
            result[key] = payload.meta[key]
    return result


# Verbatim from the original server's README (int-gradients-server).
SEED_README_SNIPPET = """
      >>> import gzip
      >>> import torch
      >>> from io import BytesIO
      >>> with gzip.open("saved_file.gzip", 'rb') as fobj:
      >>>      x = BytesIO(fobj.read())
      >>>      grad_dict = torch.load(x)
"""


def snippet_code(snippet: str) -> str:
    """Drop the ``>>> `` prompts, keeping the snippet's own indentation."""
    lines = [line.strip(" ").removeprefix(">>> ") for line in snippet.strip().splitlines()]
    return "\n".join(lines) + "\n"


# --- torch.save archives ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_and_shape_loads_like_torch_save(dtype: torch.dtype) -> None:
    obj = {f"t{i}": sample(dtype, shape, i) for i, shape in enumerate(SHAPES)}
    check_like_torch_save(obj)
    check_like_torch_save(sample(dtype, (2, 3)))  # a bare tensor at the top level


def test_plain_values_and_nesting_load_like_torch_save() -> None:
    ints = [0, 1, 255, 256, 65535, 65536, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1]
    ints += [2**63, -(2**63), 2**100, -(2**100) - 7]
    obj = {
        "ints": ints,
        "floats": [0.0, -0.0, 1.5, 1e-310, 1e308, float("nan"), float("inf"), float("-inf")],
        "strings": ["", "ascii", "caf\u00e9", "\u2603 \U0001f600", "a\x00b\nc", "\ud800"],
        "flags": [True, False, None],
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((), ("x",))],
        "empty": {"dict": {}, "list": []},
        "nested": {"a": [{"b": [[sample(torch.float32, (2,))]]}], 3: "int key", None: 1},
        "tensor_in_tuple": (sample(torch.int64, (3,)), sample(torch.bool, ())),
        "long_list": list(range(2500)),
        "wide_dict": {f"k{i}": i for i in range(1500)},
    }
    check_like_torch_save(obj)


def test_large_float32_tensor() -> None:
    big = torch.randn(4 * 1024 * 1024)
    check_like_torch_save({"integrated_gradients": big, "tokens": ["a"] * 512})


def test_many_tensors_get_their_own_storages() -> None:
    obj = [sample(torch.float32, (i % 5, 3), i) for i in range(300)]
    check_like_torch_save(obj)


def test_records_and_alignment_match_torch() -> None:
    obj = {"a": sample(torch.float16, (3,)), "b": sample(torch.float64, (0,)), "c": 1}
    data = check_like_torch_save(obj)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    ours, theirs = zipfile.ZipFile(io.BytesIO(data)), zipfile.ZipFile(buffer)
    assert ours.testzip() is None
    assert ours.namelist() == theirs.namelist()
    for name in ("byteorder", "version", ".format_version", ".storage_alignment"):
        assert ours.read(f"archive/{name}") == theirs.read(f"archive/{name}")
    assert all(i.compress_type == zipfile.ZIP_STORED for i in ours.infolist())
    for info in ours.infolist():
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
        assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    assert write_torch_save(to_raw(obj)) == data  # deterministic


def test_layout_matches_torchs_own_offset_arithmetic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch can locate storages without the central directory (mmap/meta loads)."""
    from torch.utils.serialization import config

    obj = {
        "x": sample(torch.float32, (33,)),
        "e": sample(torch.int32, (0,)),
        "y": sample(torch.uint8, (5,)),
    }
    path = tmp_path / "ours.pt"
    path.write_bytes(write_torch_save(to_raw(obj)))
    monkeypatch.setenv("TORCH_SERIALIZATION_DEBUG", "1")  # asserts each computed offset
    with config.patch({"load.calculate_storage_offsets": True}):
        assert_same(torch.load(path, mmap=True), obj)
        assert_same(torch.load(path, map_location="meta")["x"].shape, torch.Size([33]))


def test_zip64_fields_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Archives over 4 GiB need zip64; lower the threshold to exercise it cheaply."""
    monkeypatch.setattr(torchsave, "ZIP64_LIMIT", 150)
    obj = {"big": sample(torch.float32, (100,)), "empty": sample(torch.float32, (0,)), "n": 1}
    data = check_like_torch_save(obj)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    assert any(info.header_offset > 150 for info in archive.infolist())


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object(), 1j, bytearray(b"x")])
def test_unsupported_values_are_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        write_torch_save({"v": value})


def test_integers_beyond_long1_are_refused() -> None:
    with pytest.raises(ValueError):
        write_torch_save(2**3000)


# --- encode(): torch -------------------------------------------------------------


def test_seed_readme_snippet_reads_the_torch_body(
    payload: AttributionPayload, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = encode([payload], "torch", batch=False)
    assert encoded.media_type == "application/gzip"
    assert encoded.filename == "returned_gradients.gzip"
    monkeypatch.chdir(tmp_path)
    Path("saved_file.gzip").write_bytes(encoded.body)

    namespace: dict[str, Any] = {}
    exec(snippet_code(SEED_README_SNIPPET), namespace)
    grad_dict = namespace["grad_dict"]

    assert_same(grad_dict, torch_round_trip(expected_torch_dict(payload)))
    assert "timings" not in grad_dict and "alphas" not in grad_dict


def test_torch_skips_missing_meta_and_tensors() -> None:
    tensor = sample(torch.float32, (1, 2, 3))
    payload = AttributionPayload(
        meta={"target": 0, "timings": {"x": 1.0}, "tokens": ["a", "b"]},
        tensors={"integrated_gradients": to_raw(tensor)},
    )
    body = encode([payload], "torch", batch=False).body
    loaded = torch.load(io.BytesIO(gzip.decompress(body)))
    assert_same(loaded, {"integrated_gradients": tensor, "tokens": ["a", "b"], "target": 0})


def test_torch_batch(payload: AttributionPayload) -> None:
    second = AttributionPayload(meta={"model": "xlnet", "target": 0}, tensors={})
    body = encode([payload, second], "torch", batch=True).body
    loaded = torch.load(io.BytesIO(gzip.decompress(body)))
    want = {"results": [expected_torch_dict(payload), {"target": 0, "model": "xlnet"}]}
    assert_same(loaded, torch_round_trip(want))


def test_gzip_stores_big_buffers_and_compresses_small_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from intgrads_zmq.encoding import gzip_stream

    big = struct.pack("<50000f", *(math.sin(i) for i in range(50000)))  # 200 kB, incompressible
    small = b"header " * 2000  # 14 kB, very compressible
    pieces = [small, memoryview(big), b"", small, big[:100]]
    body = gzip_stream.gzip_chunks(pieces)
    assert gzip.decompress(body) == b"".join(bytes(p) for p in pieces)
    assert zlib.decompress(body, 31) == b"".join(bytes(p) for p in pieces)
    assert len(big) < len(body) < len(big) + 2000  # stored: no growth beyond headers
    monkeypatch.setattr(gzip_stream, "_deflate", None)  # without isal: zlib, same bytes out
    assert gzip.decompress(gzip_stream.gzip_chunks(pieces)) == gzip.decompress(body)


def test_gzip_output_reads_with_the_gzip_command(tmp_path: Path, payload: AttributionPayload) -> None:
    path = tmp_path / "g.gzip"
    path.write_bytes(encode([payload], "torch", batch=False).body)
    subprocess.run(["gzip", "-t", str(path)], check=True)


def test_gzip_of_nothing_is_valid() -> None:
    from intgrads_zmq.encoding import gzip_stream

    assert gzip.decompress(gzip_stream.gzip_chunks([])) == b""


# --- encode(): json -------------------------------------------------------------


def strict_json(body: bytes) -> Any:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(body, parse_constant=refuse)


def test_json_single(payload: AttributionPayload) -> None:
    encoded = encode([payload], "json", batch=False)
    assert (encoded.media_type, encoded.filename) == ("application/json", None)
    doc = strict_json(encoded.body)
    meta = {k: v for k, v in doc.items() if k != "tensors"}
    assert meta["timings"] == payload.meta["timings"]
    assert meta["completeness_error"] is None
    assert meta["attributions"][2] is None
    assert meta["tokens"] == payload.meta["tokens"]
    assert list(meta) == list(payload.meta)
    assert list(doc["tensors"]) == [
        "integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates",
    ]  # fmt: skip
    for name, entry in doc["tensors"].items():
        raw = payload.tensors[name]
        want = torch.frombuffer(bytearray(raw.data), dtype=torch.float32).reshape(raw.shape)
        assert entry["dtype"] == "float32" and entry["shape"] == list(raw.shape)
        assert entry["data"] == want.tolist()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_json_tensor_data_for_every_dtype(dtype: torch.dtype) -> None:
    tensors = {f"t{i}": sample(dtype, shape, i) for i, shape in enumerate(SHAPES)}
    payload = AttributionPayload(meta={}, tensors=to_raw(tensors))
    doc = strict_json(encode([payload], "json", batch=False).body)
    for name, tensor in tensors.items():
        entry = doc["tensors"][name]
        assert entry["dtype"] == str(dtype).removeprefix("torch.")
        assert entry["shape"] == list(tensor.shape)
        assert entry["data"] == tensor.tolist()


def test_json_non_finite_tensor_values_become_null() -> None:
    for dtype in (torch.float16, torch.float32, torch.float64):
        tensor = torch.tensor([[1.5, float("nan")], [float("inf"), float("-inf")]], dtype=dtype)
        payload = AttributionPayload(meta={"x": [float("-inf")]}, tensors={"t": to_raw(tensor)})
        doc = strict_json(encode([payload], "json", batch=False).body)
        assert doc["x"] == [None]
        assert doc["tensors"]["t"]["data"] == [[1.5, None], [None, None]]


def test_json_batch(payload: AttributionPayload) -> None:
    empty = AttributionPayload(meta={}, tensors={})
    doc = strict_json(encode([payload, empty], "json", batch=True).body)
    assert len(doc["results"]) == 2
    assert doc["results"][0]["target_label"] == "positive"
    assert doc["results"][1] == {"tensors": {}}
    assert strict_json(encode([], "json", batch=True).body) == {"results": []}


# --- safetensors ------------------------------------------------------------------


def test_write_safetensors_every_dtype(tmp_path: Path) -> None:
    tensors = {}
    for dtype in DTYPES:  # mixed item sizes, odd lengths: alignment must still hold
        for i, shape in enumerate([(), (0,), (3,), (2, 0, 3), (1, 3, 5)]):
            tensors[f"{dtype}-{i}"] = sample(dtype, shape, i)
    data = write_safetensors(to_raw(tensors), {"a": "b", "uni": "\u2603"})
    (header_len,) = struct.unpack_from("<Q", data)
    assert header_len % 8 == 0
    header = json.loads(data[8 : 8 + header_len])
    for name, tensor in tensors.items():
        begin, end = header[name]["data_offsets"]
        assert begin % tensor.element_size() == 0 and end - begin == tensor.nbytes
    loaded = safetensors.torch.load(data)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert_same(loaded[name].contiguous(), tensor)
    path = tmp_path / "t.safetensors"
    path.write_bytes(data)
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"a": "b", "uni": "\u2603"}
        assert torch.equal(handle.get_tensor("torch.float32-4"), tensors["torch.float32-4"])


def test_write_safetensors_without_metadata_and_refusals() -> None:
    assert safetensors.torch.load(write_safetensors({}, {})) == {}
    with pytest.raises(TypeError):
        write_safetensors({}, {"n": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        write_safetensors({"__metadata__": to_raw(torch.zeros(1))}, {})


def test_safetensors_single(payload: AttributionPayload, tmp_path: Path) -> None:
    encoded = encode([payload], "safetensors", batch=False)
    assert encoded.media_type == "application/octet-stream"
    assert encoded.filename == "returned_gradients.safetensors"
    path = tmp_path / encoded.filename
    path.write_bytes(encoded.body)
    with safetensors.safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["intgrads"])
        assert sorted(handle.keys()) == sorted(payload.tensors)
        for name in handle.keys():
            raw = payload.tensors[name]
            assert handle.get_tensor(name).numpy().tobytes() == bytes(raw.data)
    assert meta["timings"] == payload.meta["timings"]
    assert meta["completeness_error"] is None


def test_safetensors_batch(payload: AttributionPayload) -> None:
    other = AttributionPayload(
        meta={"target": 0}, tensors={"integrated_gradients": to_raw(torch.ones(1, 2, 3))}
    )
    body = encode([payload, other], "safetensors", batch=True).body
    loaded = safetensors.torch.load(body)
    assert set(loaded) == {f"0.{n}" for n in payload.tensors} | {"1.integrated_gradients"}
    assert torch.equal(loaded["1.integrated_gradients"], torch.ones(1, 2, 3))
    (header_len,) = struct.unpack_from("<Q", body)
    metas = json.loads(json.loads(body[8 : 8 + header_len])["__metadata__"]["intgrads"])
    assert [m["target"] for m in metas] == [1, 0]


# --- encode() arguments -------------------------------------------------------------


def test_encode_argument_errors(payload: AttributionPayload) -> None:
    with pytest.raises(ValueError):
        encode([payload], "pickle", batch=False)
    with pytest.raises(ValueError):
        encode([payload, payload], "json", batch=False)
    with pytest.raises(ValueError):
        encode([], "torch", batch=False)


def test_formats_table() -> None:
    assert DEFAULT_FORMAT == "torch"
    assert {name: (f.media_type, f.filename) for name, f in FORMATS.items()} == {
        "torch": ("application/gzip", "returned_gradients.gzip"),
        "json": ("application/json", None),
        "safetensors": ("application/octet-stream", "returned_gradients.safetensors"),
    }


# --- negotiation ----------------------------------------------------------------------

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        (None, None, "torch"),
        (None, "", "torch"),
        (None, "*/*", "torch"),
        (None, BROWSER, "torch"),
        (None, "application/json", "json"),
        (None, "Application/JSON; charset=utf-8", "json"),
        (None, "application/gzip", "torch"),
        (None, "application/x-gzip", "torch"),
        (None, "application/safetensors", "safetensors"),
        (None, "application/vnd.safetensors", "safetensors"),
        (None, "text/plain", "torch"),
        (None, "application/*", "torch"),
        (None, "application/gzip;q=0.5, application/json", "json"),
        (None, "application/json;q=0.2, application/safetensors;q=0.9", "safetensors"),
        (None, "application/json, application/safetensors", "json"),
        (None, "application/json;q=0, */*", "torch"),
        (None, "application/gzip;q=0, */*", "json"),
        (None, "application/json;q=0", "torch"),
        (None, "application/json;q=oops", "json"),
        (None, "text/html, application/json;q=0.1", "json"),
        ("json", "application/gzip", "json"),
        ("gzip", "application/json", "torch"),
        ("torch", None, "torch"),
        ("SafeTensors", None, "safetensors"),
        (" json ", None, "json"),
        ("", "application/json", "json"),
    ],
)
def test_negotiate(query: str | None, accept: str | None, expected: str) -> None:
    assert negotiate(query, accept) == expected


@pytest.mark.parametrize("query", ["xml", "pt", "application/json", "torch,json"])
def test_negotiate_unknown_query_format(query: str) -> None:
    with pytest.raises(BadRequest) as caught:
        negotiate(query, "application/json")
    assert caught.value.field == "format"
    assert caught.value.status == 400


# --- process hygiene --------------------------------------------------------------------


def test_encoding_does_not_import_torch_or_numpy() -> None:
    script = """
import sys
import intgrads_zmq.encoding as enc
from intgrads_zmq.payload import AttributionPayload, RawTensor
p = AttributionPayload({"target": 1}, {"integrated_gradients": RawTensor("float16", (2,), bytes(4))})
for fmt in enc.FORMATS:
    enc.encode([p], fmt, batch=False)
    enc.encode([p, p], fmt, batch=True)
enc.negotiate(None, "application/json")
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy"))
assert not bad, bad
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
