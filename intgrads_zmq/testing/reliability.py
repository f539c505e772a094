"""Load, bad input and fuzzing against a running stack: shared by
``tests/reliability/`` and ``bench/reliability.py`` (which runs them bigger).

Everything here talks HTTP to a real gunicorn; nothing is mocked. A request is
a :class:`Spec` (path, JSON body, headers); :func:`canonical` turns a response
body into what must be identical between two runs of the same request: the
bytes themselves for the gzip'd torch dict (it carries no timings), the tensor
bytes plus the metadata without ``timings`` for safetensors and JSON.
"""

from __future__ import annotations

import json
import random
import statistics
import struct
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intgrads_zmq.testing.stack import REPO, http

# -- requests ----------------------------------------------------------------
TEXTS = (
    "a great film",
    "this movie was terrible and boring .",
    "the story is not very good , but the music is great !",
    "i loved the characters and the ending . brilliant director , funny scenes and a sad ending . "
    "it was fine , the actors really enjoyed it .",
    " ".join(["the worst script ever , a dull mess . i hated this long boring film ."] * 8),
    "naïve café — a great film ☺ with 日本 music 🎬 and a \u200b sad ending",
)


@dataclass(frozen=True)
class Spec:
    """One HTTP request of the load mix."""

    name: str
    path: str
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def fmt(self) -> str:
        if "format=safetensors" in self.path or ("Accept", "application/safetensors") in self.headers:
            return "safetensors"
        if "format=json" in self.path:
            return "json"
        return "torch"

    def send(self, url: str, timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
        return http("POST", url + self.path, data=json.dumps(self.body).encode(),
                    headers={"Content-Type": "application/json", **dict(self.headers)}, timeout=timeout)


OPTION_SETS: tuple[dict[str, Any], ...] = (
    {},
    {"n_steps": 1},
    {"n_steps": 5, "method": "riemann_left"},
    {"n_steps": 8, "method": "riemann_right", "baseline": "zero"},
    {"n_steps": 24, "method": "riemann_middle", "baseline": "unk"},
    {"n_steps": 6, "method": "riemann_trapezoid", "baseline": "period"},
    {"n_steps": 10, "baseline": "rand-norm", "seed": 1},
    {"n_steps": 10, "baseline": "rand-norm", "seed": 7},
    {"n_steps": 4, "baseline": "rand-unif", "seed": 3, "target": 0},
    {"n_steps": 12, "target": "positive", "fields": ["integrated_gradients"]},
    {"n_steps": 3, "max_length": 8},
    {"n_steps": 2, "fields": ["step_sizes", "intermediates"]},
    {"n_steps": 6, "baseline": "mask", "aggregate": "words"},
    {"n_steps": 4, "target": "all", "metrics": ["comprehensiveness", "log_odds"]},
    {"n_steps": 4, "target": "positive", "contrast": "negative", "fields": ["integrated_gradients"]},
)
FORMATS = (
    ("/model/", ()),
    ("/model/?format=safetensors", ()),
    ("/model/tiny/", ()),
    ("/model/tiny", (("Accept", "application/safetensors"),)),
    ("/model/?format=gzip", ()),
    ("/model/?format=json", ()),
)


def load_specs(model: str = "tiny") -> list[Spec]:
    """24 requests: every option set, text and format, two batches among them."""
    specs = []
    for index in range(24):
        turn = index // len(OPTION_SETS)  # the second turn pairs each option set differently
        options = OPTION_SETS[index % len(OPTION_SETS)]
        path, headers = FORMATS[(index + turn) % len(FORMATS)]
        path = path.replace("/tiny", f"/{model}")
        text = (index * 5 + turn * 3) % len(TEXTS)
        if index in (7, 19):
            body = {"sequences": [TEXTS[text], TEXTS[(text + 2) % len(TEXTS)]], **options}
        else:
            body = {"sequence": TEXTS[text], **options}
        specs.append(Spec(f"spec{index:02d}", path, body, headers))
    return specs


def canonical(body: bytes, fmt: str) -> Any:
    """What two answers to the same request must share exactly (timings excluded)."""
    if fmt == "torch":
        return body
    if fmt == "json":
        return _without_timings(json.loads(body))
    (size,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8 : 8 + size])
    meta = header.get("__metadata__", {})
    header["__metadata__"] = {k: _without_timings(json.loads(v)) for k, v in meta.items()}
    return header, body[8 + size :]


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "timings"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def references(url: str, specs: list[Spec]) -> dict[str, Any]:
    """Each spec sent alone, one after another: the answers the load must match."""
    out = {}
    for spec in specs:
        status, _, body = spec.send(url)
        if status != 200:
            raise AssertionError(f"{spec.name} alone: HTTP {status}: {body[:300]!r}")
        out[spec.name] = canonical(body, spec.fmt)
    return out


# -- load --------------------------------------------------------------------
@dataclass
class LoadResult:
    """Figures of one load run; ``lost`` (no HTTP answer at all) must stay empty."""

    requests: int = 0  # logical requests (a retried 503 counts once)
    exchanges: int = 0  # HTTP round trips, retries included
    ok: int = 0
    identical: int = 0
    mismatched: list[str] = field(default_factory=list)
    rejected_503: int = 0  # deliberate "overloaded" answers, then retried
    gave_up_503: int = 0  # requests still 503 after every retry
    errors: list[str] = field(default_factory=list)  # any other status
    lost: list[str] = field(default_factory=list)  # exceptions: no answer
    latencies: list[float] = field(default_factory=list)  # seconds, successful exchanges
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> str:
        return (
            f"requests {self.requests} (HTTP exchanges {self.exchanges}), successes {self.ok} "
            f"(byte-identical to the request sent alone: {self.identical}, different: {len(self.mismatched)}), "
            f"503 overloaded {self.rejected_503} (retried; still 503 after all retries: {self.gave_up_503}), "
            f"other errors {len(self.errors)}, lost {len(self.lost)}; "
            f"latency p50 {self.percentile(50) * 1000:.0f} ms, p99 {self.percentile(99) * 1000:.0f} ms, "
            f"mean {statistics.fmean(self.latencies) * 1000 if self.latencies else float('nan'):.0f} ms; "
            f"{self.seconds:.1f} s, {self.requests / max(self.seconds, 1e-9):.1f} requests/s"
        )


def run_load(url: str, specs: list[Spec], expected: dict[str, Any], *, clients: int, per_client: int,
             retries_503: int = 50, timeout: float = 120.0, seed: int = 0) -> LoadResult:
    """``clients`` threads each send ``per_client`` requests drawn from ``specs``.

    A 503 "overloaded" (the queue bound at work) is retried, backing off
    exponentially (with jitter) up to its Retry-After, at most ``retries_503``
    times; every other answer is final.
    Each success is compared with ``expected[spec.name]`` (see :func:`canonical`).
    """
    result = LoadResult()
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        start.wait()
        for i in range(per_client):
            spec = specs[(index * 7 + i * 5 + rng.randrange(3)) % len(specs)]
            for attempt in range(retries_503 + 1):
                began = time.perf_counter()
                try:
                    status, headers, body = spec.send(url, timeout=timeout)
                except Exception as exc:  # noqa: BLE001 - a lost request is the finding
                    with lock:
                        result.exchanges += 1
                        result.lost.append(f"{spec.name}: {type(exc).__name__}: {exc}")
                    break
                elapsed = time.perf_counter() - began
                with lock:
                    result.exchanges += 1
                    result.statuses[status] += 1
                retry_after = headers.get("retry-after")
                if status == 503 and _code(body) == "overloaded" and retry_after:
                    with lock:
                        result.rejected_503 += 1
                    if attempt < retries_503:  # exponential backoff with jitter, capped by Retry-After
                        time.sleep(min(float(retry_after), 0.05 * 2**attempt) * rng.uniform(0.5, 1.5))
                        continue
                    with lock:
                        result.gave_up_503 += 1
                    break
                with lock:
                    if status == 200:
                        result.ok += 1
                        result.latencies.append(elapsed)
                        if canonical(body, spec.fmt) == expected[spec.name]:
                            result.identical += 1
                        else:
                            result.mismatched.append(spec.name)
                    else:
                        result.errors.append(f"{spec.name}: HTTP {status}: {body[:200]!r}")
                break
            with lock:
                result.requests += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - began
    return result


def _code(body: bytes) -> str | None:
    try:
        return json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None


# -- malformed HTTP ------------------------------------------------------------
@dataclass(frozen=True)
class Bad:
    """A malformed request, as raw bytes; ``answered_by`` says who must answer:
    ``app`` (Falcon: a 4xx with a JSON error body) or ``gunicorn`` (its HTTP
    parser refuses the request before the application runs: any 4xx, with
    gunicorn's own small text/HTML body)."""

    name: str
    raw: bytes
    answered_by: str = "app"
    status: int | None = None  # exact status when it is part of the contract
    half_close: bool = False  # end the upload (EOF) after sending: the body is cut short


def _post(path: str, body: bytes, *headers: str, content_type: str = "application/json",
          length: int | str | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if length is not None or not any(h.lower().startswith("transfer-encoding") for h in headers):
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _chunked(*chunks: bytes, trailer: bytes = b"0\r\n\r\n") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + trailer


def pickle_bomb(marker: Path) -> bytes:
    """A pickle whose unpickling creates ``marker``: proof of no unpickling if it never appears."""
    import pickle

    class Trap:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    return pickle.dumps(Trap(), protocol=2)


TEN_MB = 10 * 1024 * 1024


def bad_requests(marker: Path) -> list[Bad]:
    """At least 50 malformed requests: body, types, numbers, unicode, size,
    methods, paths, headers, framing."""
    seq = b'{"sequence": "a great film", '
    items = [
        # bodies that are not a JSON object with a sequence
        Bad("empty body, Content-Length 0", _post("/model/", b""), status=400),
        Bad("no body and no Content-Length", _request("POST", "/model/", "Content-Type: application/json"),
            status=400),
        Bad("lone brace", _post("/model/", b"{"), status=400),
        Bad("trailing garbage", _post("/model/", b'{"sequence": "a"} x'), status=400),
        Bad("single quotes", _post("/model/", b"{'sequence': 'a'}"), status=400),
        Bad("JSON number", _post("/model/", b"12"), status=400),
        Bad("JSON true", _post("/model/", b"true"), status=400),
        Bad("form-encoded", _post("/model/", b"sequence=a+great+film", content_type="application/x-www-form-urlencoded"),
            status=400),
        Bad("multipart", _post("/model/", b'--x\r\nContent-Disposition: form-data; name="sequence"\r\n\r\na\r\n--x--\r\n',
                               content_type="multipart/form-data; boundary=x"), status=400),
        Bad("pickle body", _post("/model/", pickle_bomb(marker), content_type="application/python-pickle"),
            status=400),
        Bad("gzip body, Content-Encoding gzip", _post("/model/", __import__("gzip").compress(b'{"sequence": "a"}'),
                                                     "Content-Encoding: gzip"), status=400),
        # wrong types and values
        Bad("sequence is an object", _post("/model/", b'{"sequence": {"text": "a"}}'), status=400),
        Bad("sequence is true", _post("/model/", b'{"sequence": true}'), status=400),
        Bad("sequences is a string", _post("/model/", b'{"sequences": "a great film"}'), status=400),
        Bad("sequences nested", _post("/model/", b'{"sequences": [["a"]]}'), status=400),
        Bad("too many sequences", _post("/model/", json.dumps({"sequences": ["a"] * 65}).encode()), status=400),
        Bad("n_steps negative", _post("/model/", seq + b'"n_steps": -1}'), status=400),
        Bad("n_steps 1e3", _post("/model/", seq + b'"n_steps": 1e3}'), status=400),
        Bad("n_steps 1e400", _post("/model/", seq + b'"n_steps": 1e400}'), status=400),
        Bad("n_steps -Infinity", _post("/model/", seq + b'"n_steps": -Infinity}'), status=400),
        Bad("seed 2**63", _post("/model/", seq + b'"seed": 9223372036854775808}'), status=400),
        Bad("seed 10**30", _post("/model/", seq + b'"seed": 1000000000000000000000000000000}'), status=400),
        Bad("seed NaN", _post("/model/", seq + b'"seed": NaN}'), status=400),
        Bad("seed 5000 digits", _post("/model/", seq + b'"seed": 1' + b"0" * 5000 + b"}"), status=400),
        Bad("target -1", _post("/model/", seq + b'"target": -1}'), status=400),
        Bad("target empty label", _post("/model/", seq + b'"target": ""}'), status=400),
        Bad("target 300-char label", _post("/model/", seq + b'"target": "' + b"x" * 300 + b'"}'), status=400),
        Bad("target true", _post("/model/", seq + b'"target": true}'), status=400),
        Bad("method null", _post("/model/", seq + b'"method": null}'), status=400),
        Bad("baseline a list", _post("/model/", seq + b'"baseline": ["pad"]}'), status=400),
        Bad("fields a comma string", _post("/model/", seq + b'"fields": "integrated_gradients,step_sizes"}'),
            status=400),
        Bad("fields of numbers", _post("/model/", seq + b'"fields": [1]}'), status=400),
        Bad("fields an object", _post("/model/", seq + b'"fields": {}}'), status=400),
        Bad("max_length 1", _post("/model/", seq + b'"max_length": 1}'), status=400),
        Bad("max_length a string", _post("/model/", seq + b'"max_length": "512"}'), status=400),
        Bad("deeply nested fields", _post("/model/", seq + b'"fields": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
            status=400),
        Bad("50000 unknown keys", _post("/model/", json.dumps({f"k{i}": 0 for i in range(50000)}).encode()),
            status=400),
        Bad("NUL in a key", _post("/model/", b'{"sequence": "a", "n_steps\\u0000": 2}'), status=400),
        # unicode edge cases
        Bad("only unicode spaces", _post("/model/", '{"sequence": "\u2003\u3000\u00a0"}'.encode()), status=400),
        Bad("lone low surrogate", _post("/model/", b'{"sequence": "a\\udc00"}'), status=400),
        Bad("UTF-16 body", _post("/model/", '{"sequence": "a great film"}'.encode("utf-16")), status=400),
        Bad("UTF-8 BOM", _post("/model/", b'\xef\xbb\xbf{"sequence": "a"}'), status=400),
        Bad("overlong UTF-8", _post("/model/", b'{"sequence": "a\xc0\xaf"}'), status=400),
        Bad("Latin-1 body", _post("/model/", '{"sequence": "café"}'.encode("latin-1")), status=400),
        Bad("100001-character text", _post("/model/", json.dumps({"sequence": "a" * 100_001}).encode()), status=400),
        # sizes
        Bad("10 MB body", _post("/model/", b'{"sequence": "' + b"a" * TEN_MB + b'"}'), status=413),
        Bad("Content-Length 10 MB, 20 bytes sent", _post("/model/", b'{"sequence": "a"}', length=TEN_MB), status=413,
            half_close=True),
        Bad("Content-Length 10**12", _post("/model/", b"", length=10**12), status=413),
        # methods
        Bad("PUT /model/", _request("PUT", "/model/", body=b'{"sequence": "a"}'), status=405),
        Bad("DELETE /model/", _request("DELETE", "/model/"), status=405),
        Bad("PATCH /model/tiny/", _request("PATCH", "/model/tiny/", body=b"{}"), status=405),
        Bad("GET /model/", _request("GET", "/model/"), status=405),
        Bad("HEAD /model/", _request("HEAD", "/model/"), status=405),
        Bad("POST /models", _post("/models", b"{}"), status=405),
        Bad("POST /healthz", _post("/healthz", b"{}"), status=405),
        Bad("unknown method FOO", _request("FOO", "/model/"), status=400),
        Bad("lowercase method", _request("post", "/model/", body=b'{"sequence": "a"}'), answered_by="gunicorn"),
        # paths
        Bad("/model/../models", _post("/model/../models", b'{"sequence": "a"}'), status=404),
        Bad("/model/%00/", _post("/model/%00/", b'{"sequence": "a"}'), status=404),
        Bad("/model/%2e%2e/", _post("/model/%2e%2e/", b'{"sequence": "a"}'), status=404),
        Bad("/model/%ff/", _post("/model/%ff/", b'{"sequence": "a"}'), status=404),
        Bad("model name of 300 characters", _post("/model/" + "m" * 300 + "/", b'{"sequence": "a"}')),
        Bad("/model/tiny/extra/", _post("/model/tiny/extra/", b'{"sequence": "a"}'), status=404),
        Bad("/model/tiny%2Fextra/", _post("/model/tiny%2Fextra/", b'{"sequence": "a"}'), status=404),
        Bad("/model/tiny/../../etc/passwd", _post("/model/tiny/../../etc/passwd", b'{"sequence": "a"}'), status=404),
        Bad("/MODEL/", _post("/MODEL/", b'{"sequence": "a"}'), status=404),
        Bad("GET /static/../../etc/passwd", _request("GET", "/static/../../etc/passwd"), status=404),
        Bad("GET /static/%2e%2e/%2e%2e/etc/passwd", _request("GET", "/static/%2e%2e/%2e%2e/etc/passwd"), status=404),
        Bad("format=xml", _post("/model/?format=xml", b'{"sequence": "a"}'), status=400),
        Bad("URL of 20000 characters", _post("/model/?" + "a" * 20000, b'{"sequence": "a"}'), answered_by="gunicorn"),
        # headers and framing
        Bad("header of 20000 characters", _post("/model/", b'{"sequence": "a"}', "X-Big: " + "b" * 20000),
            answered_by="gunicorn"),
        Bad("200 headers", _post("/model/", b'{"sequence": "a"}', *[f"X-H{i}: v" for i in range(200)]),
            answered_by="gunicorn"),
        Bad("header without a colon", _post("/model/", b'{"sequence": "a"}', "NoColonHere"), answered_by="gunicorn"),
        Bad("space before the colon", _post("/model/", b'{"sequence": "a"}', "X-Bad : v"), answered_by="gunicorn"),
        Bad("control character in a header", _post("/model/", b'{"sequence": "a"}', "X-Bad: a\x01b"),
            answered_by="gunicorn"),
        Bad("Content-Length -5", _post("/model/", b"", length=-5), answered_by="gunicorn"),
        Bad("Content-Length abc", _post("/model/", b"", length="abc"), answered_by="gunicorn"),
        Bad("two different Content-Lengths", _post("/model/", b'{"sequence": "a"}', "Content-Length: 3"),
            answered_by="gunicorn"),
        Bad("Content-Length and chunked", _post("/model/", _chunked(b'{"sequence": "a"}'),
                                                "Transfer-Encoding: chunked", length=5), answered_by="gunicorn"),
        Bad("Transfer-Encoding gzip, chunked", _post("/model/", _chunked(b"x"), "Transfer-Encoding: gzip, chunked"),
            answered_by="gunicorn"),
        Bad("chunked bad JSON", _post("/model/", _chunked(b'{"sequ', b'ence": '), "Transfer-Encoding: chunked"),
            status=400),
        Bad("chunked wrong types", _post("/model/", _chunked(b'{"sequence": ', b'"a", "n_steps": "x"}'),
                                         "Transfer-Encoding: chunked"), status=400),
        Bad("chunked 10 MB", _post("/model/", _chunked(*[b"a" * (1 << 20)] * 10), "Transfer-Encoding: chunked"),
            status=413),
        Bad("chunk size not hex", _post("/model/", b"zz\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
            status=400),
        Bad("chunked body cut short", _post("/model/", b"40\r\n{\"sequence\": ", "Transfer-Encoding: chunked"),
            status=400, half_close=True),
        Bad("HTTP/9.9", b"POST /model/ HTTP/9.9\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", answered_by="gunicorn"),
        Bad("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, answered_by="any",
            half_close=True),
        Bad("request line of garbage", b"\x00\xff\xfe garbage\r\n\r\n", answered_by="gunicorn"),
    ]
    return items


def check_bad_answer(bad: Bad, status: int | None, headers: dict[str, str], body: bytes) -> str | None:
    """None if the answer is acceptable for ``bad``; else what is wrong."""
    if status is None:
        # the server closed without answering: acceptable only for framing the
        # HTTP parser could not even delimit (documented per case)
        return None if bad.answered_by == "any" else "no HTTP answer"
    if not 400 <= status < 500:
        return f"HTTP {status}, not a 4xx: {body[:200]!r}"
    if bad.status is not None and status != bad.status:
        return f"HTTP {status}, expected {bad.status}: {body[:200]!r}"
    json_body = headers.get("content-type", "").startswith("application/json")
    if bad.answered_by == "app" or json_body:
        if bad.name.startswith("HEAD "):
            return None  # a HEAD answer has no body by definition
        try:
            error = json.loads(body)
        except ValueError:
            return f"HTTP {status} without a JSON body: {body[:200]!r}"
        if not (isinstance(error, dict) and error.get("title") and error.get("description")):
            return f"JSON error without title/description: {error!r}"[:300]
        if "Traceback" in error["description"]:
            return "a traceback in the error"
    return None


# -- fuzzing -------------------------------------------------------------------
@dataclass
class FuzzResult:
    returncode: int
    examples: int
    statuses: Counter
    server_errors: list[str]
    output: str
    seconds: float


def run_schemathesis(url: str, *, examples: int, seed: int, folder: Path, timeout: float = 600,
                     workers: int = 2, phases: str = "examples,coverage,fuzzing") -> FuzzResult:
    """``schemathesis run URL/openapi.json`` (positive and negative cases) with the
    ``not_a_server_error`` check and a per-request timeout (a hang is a failure);
    the NDJSON event log gives the number of requests and their statuses."""
    report = folder / f"schemathesis-{seed}.ndjson"
    command = [
        str(Path(REPO) / ".venv" / "bin" / "schemathesis"), "run", f"{url}/openapi.json",
        "--checks", "not_a_server_error", "--max-examples", str(examples), "--seed", str(seed),
        "--request-timeout", "30", "--workers", str(workers), "--mode", "all",
        "--phases", phases, "--suppress-health-check", "all",
        "--generation-database", "none", "--no-color", "--report", "ndjson",
        "--report-ndjson-path", str(report),
    ]
    executable = Path(command[0])
    if not executable.exists():
        import shutil

        command[0] = shutil.which("schemathesis") or "schemathesis"
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=folder)
    seconds = time.perf_counter() - began
    statuses: Counter = Counter()
    server_errors = []
    for line in report.read_text().splitlines() if report.exists() else []:
        _walk_responses(json.loads(line), statuses, server_errors)
    return FuzzResult(done.returncode, sum(statuses.values()), statuses, server_errors,
                      done.stdout + done.stderr, seconds)


def _walk_responses(event: Any, statuses: Counter, server_errors: list[str]) -> None:
    """Find every recorded HTTP response in a schemathesis NDJSON event."""
    if isinstance(event, dict):
        response = event.get("response")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            code = response["status_code"]
            statuses[code] += 1
            if code >= 500:
                server_errors.append(json.dumps(event)[:500])
        for key, value in event.items():
            if key != "response":
                _walk_responses(value, statuses, server_errors)
    elif isinstance(event, list):
        for value in event:
            _walk_responses(value, statuses, server_errors)
