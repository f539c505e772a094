"""A small Python client for the HTTP API (``POST /model/`` and friends).

Why it exists: the original server was used with ``curl`` plus a snippet that
gunzips and ``torch.load``s the file. This client does the same in one call,
for every response format, and turns the server's JSON errors into exceptions
that keep the status, the stable ``code`` and the ``field`` at fault.

It uses only the standard library (``urllib``) for HTTP, so that importing it
costs nothing and works on machines without the server's dependencies. Torch
is imported only to decode the formats that hold torch tensors ("torch", the
default, and "safetensors" via ``safetensors.torch``); "json" needs neither.

Every call has a timeout: connecting and each wait for data are bounded by the
socket timeout, and the whole response must arrive before the same deadline
(checked between reads), so a call never hangs. A server that cannot be
reached raises :class:`ServerUnreachable`, a deadline raises
:class:`RequestTimeout`; both are :class:`ApiError` with ``status`` 0.

    >>> client = Client("http://localhost:8888")
    >>> grads = client.attribute("a great film", n_steps=20)
    >>> grads["integrated_gradients"].shape
    >>> every = client.attribute("a great film", target="all", aggregate="words",
    ...                          metrics=["comprehensiveness"], format="json")
    >>> every["word_attributions"][1]      # the words' scores for class 1

Long requests: ``attribute(..., progress=callback)`` reports progress as it
goes (Server-Sent Events for format "json"; a job polled for the other
formats), and :meth:`Client.submit` starts a job that outlives the call::

    >>> job = client.submit("a long text ...", n_steps=300)
    >>> job.status()["state"]          # queued / running / done / failed / cancelled
    >>> grads = job.result(progress=print)   # waits, polling; any format
    >>> job.cancel()                   # stops the worker at its next chunk
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.client import HTTPException, HTTPResponse
from typing import Any

from . import __version__
from .errors import IntgradsError

__all__ = ["FORMATS", "ApiError", "Client", "Job", "RequestTimeout", "ServerUnreachable"]

Progress = Callable[[dict[str, Any]], None]
FINISHED_STATES = ("done", "failed", "cancelled")
POLL_SECONDS = 0.5

FORMATS = ("torch", "json", "safetensors")
_READ_CHUNK = 1 << 20
_MEDIA_TYPES = {
    "torch": "application/gzip",
    "json": "application/json",
    "safetensors": "application/octet-stream",
}


class ApiError(Exception):
    """An error answer from the server, or no usable answer at all.

    ``status`` is the HTTP status (0 when no response came back), ``code`` the
    server's stable error code (``bad_request``, ``unknown_model``, ...; or
    ``unreachable`` / ``timeout`` / ``bad_response`` from the client side),
    ``field`` the request field at fault for validation errors, and
    ``retry_after`` the seconds the server asked to wait (503s). ``error``
    holds the same failure as the typed :mod:`intgrads_zmq.errors` class when
    the code is one of ours (so ``isinstance(e.error, BadRequest)`` works),
    else ``None``. ``body`` is the decoded JSON error body, if there was one.
    """

    def __init__(
        self,
        status: int,
        title: str,
        description: str,
        *,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status} {title}: {description}" if status else f"{title}: {description}")
        self.status = status
        self.title = title
        self.description = description
        self.code = code
        self.field = field
        self.retry_after = retry_after
        self.body = body
        self.error: IntgradsError | None = _typed_error(body)

    @property
    def retryable(self) -> bool:
        """True for failures that may pass on a later try (503, unreachable, timeout)."""
        return self.status == 503 or self.code in ("unreachable", "timeout")

    @classmethod
    def from_response(cls, status: int, reason: str, headers: Mapping[str, str],
                      raw: bytes) -> ApiError:
        """Build the error from an HTTP error response (JSON body or not)."""
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        retry_header = _float_or_none(headers.get("Retry-After"))
        if not isinstance(body, dict):
            text = raw.decode("utf-8", "replace").strip()[:500]
            return cls(status, reason or "HTTP error", text or reason or "no description",
                       retry_after=retry_header)
        field = body.get("field")
        retry = _float_or_none(body.get("retry_after"))
        return cls(
            status,
            str(body.get("title") or reason or "HTTP error"),
            str(body.get("description") or ""),
            code=body.get("code") if isinstance(body.get("code"), str) else None,
            field=field if isinstance(field, str) else None,
            retry_after=retry if retry is not None else retry_header,
            body=body,
        )


class ServerUnreachable(ApiError):
    """Nothing answered: connection refused, name not resolved, reset mid-way."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "Server unreachable", f"{url}: {reason}", code="unreachable")


class RequestTimeout(ApiError):
    """The server did not answer (completely) within the client's timeout."""

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(0, "Timeout", f"{url}: no complete answer within {timeout:g} s",
                         code="timeout")


def _typed_error(body: Any) -> IntgradsError | None:
    """The matching :class:`IntgradsError` when ``body`` carries one of our codes."""
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        return None
    error = IntgradsError.from_dict(body)
    return error if error.code == body["code"] else None


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class Client:
    """Talks to one intgrads-zmq HTTP frontend.

    ``base_url`` is where gunicorn listens (``http://host:8888``). ``timeout``
    (seconds) bounds every call; pass ``timeout=`` to a call to override it
    once. Path-integrated gradients of long texts take a while on a CPU, so
    the default is generous (the server's own deadline is 600 s too).
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8888", timeout: float = 600.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)

    # -- attribution ------------------------------------------------------
    def attribute(
        self,
        text: str,
        *,
        model: str | None = None,
        n_steps: int | str | None = None,
        tolerance: float | None = None,
        method: str | None = None,
        baseline: str | None = None,
        target: int | str | None = None,
        max_length: int | None = None,
        seed: int | None = None,
        fields: Iterable[str] | None = None,
        contrast: int | str | None = None,
        aggregate: str | None = None,
        metrics: Iterable[str] | None = None,
        format: str = "torch",
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Explain one text; returns its tensors and metadata as one dict.

        Options left as ``None`` are not sent, so the serving worker's defaults
        (``--n-steps``, ``--baseline``, ...) apply, exactly as for curl users.
        ``format`` picks the wire format: "torch" (gzip'd ``torch.save``, the
        original server's), "json" (a summary unless ``fields`` asks for
        tensors, which then come as ``{"dtype", "shape", "data"}``) or
        "safetensors" (tensors plus the metadata merged in).

        ``progress`` (optional) is called with dicts like ``{"state":
        "queued", "position": 0}`` and ``{"state": "running", "done": 40,
        "total": 300, "eta_seconds": 2.1}`` while the request runs: read from
        Server-Sent Events for "json", from a polled job for other formats.

        What is explained: ``target`` (an index, a label, or ``"all"`` for
        every class in one pass: the class-dependent tensors then gain a
        leading class axis and the per-class metadata become lists in class
        order), ``contrast`` (an index or a label: explain logit[target] -
        logit[contrast]). ``aggregate="words"`` adds ``words``,
        ``word_attributions`` and ``word_spans``; ``metrics`` (a list from
        "comprehensiveness", "sufficiency", "log_odds") adds ``metrics``.
        """
        body = {"sequence": text, **_options(n_steps, method, baseline, target, max_length, seed, fields, tolerance,
                                                contrast, aggregate, metrics)}
        if progress is not None and format == "json":
            return self._attribute_streamed(model, body, progress, timeout)
        if progress is not None:
            job = self._submit(model, body, format, timeout)
            return job.result(format=format, progress=progress, timeout=timeout)
        raw = self._post(model, body, format, timeout)
        return _decode_single(raw, format)

    def submit(
        self,
        text: str,
        *,
        model: str | None = None,
        n_steps: int | str | None = None,
        tolerance: float | None = None,
        method: str | None = None,
        baseline: str | None = None,
        target: int | str | None = None,
        max_length: int | None = None,
        seed: int | None = None,
        fields: Iterable[str] | None = None,
        contrast: int | str | None = None,
        aggregate: str | None = None,
        metrics: Iterable[str] | None = None,
        summary_only: bool = False,
        timeout: float | None = None,
    ) -> Job:
        """Start a job (``POST /jobs/``): the server keeps computing, and keeps
        the result for a while, whatever happens to this process's
        connection. ``summary_only`` keeps no tensors (the JSON summary);
        otherwise the result can be fetched in any format."""
        body = {"sequence": text, **_options(n_steps, method, baseline, target, max_length, seed, fields, tolerance,
                                                contrast, aggregate, metrics)}
        return self._submit(model, body, "json" if summary_only else "torch", timeout)

    def job(self, job_id: str) -> Job:
        """A handle on a job started elsewhere (by its id)."""
        return Job(self, job_id)

    def _submit(self, model: str | None, body: dict[str, Any], fmt: str, timeout: float | None) -> Job:
        query = {"format": fmt}
        if model is not None:
            query["model"] = model
        data = json.dumps(body, allow_nan=False).encode("utf-8")
        raw = self._request("POST", "/jobs/?" + urllib.parse.urlencode(query), data=data,
                            headers={"Content-Type": "application/json; charset=utf-8"}, timeout=timeout)
        return Job(self, json.loads(raw)["job_id"])

    def _attribute_streamed(self, model: str | None, body: dict[str, Any], progress: Progress,
                            timeout: float | None) -> dict[str, Any]:
        path = "/model/" if model is None else f"/model/{urllib.parse.quote(model, safe='')}/"
        data = json.dumps(body, allow_nan=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "text/event-stream"}
        for name, event in self._events("POST", path, data, headers, timeout):
            if name == "queued":
                progress({"state": "queued", **event})
            elif name == "progress":
                progress({"state": "running", **event})
            elif name == "result":
                return event
            elif name == "error":
                raise ApiError.from_response(int(event.get("status", 500)), "", {}, json.dumps(event).encode())
        raise ApiError(200, "Bad response", "the event stream ended without a result", code="bad_response")

    def _events(self, method: str, path: str, data: bytes, headers: dict[str, str],
                timeout: float | None) -> Iterator[tuple[str, Any]]:
        """Server-Sent Events as (name, decoded JSON data); every read is bounded
        by the socket timeout and the whole stream by the call's deadline."""
        limit = self.timeout if timeout is None else float(timeout)
        url = self.base_url + path
        request = urllib.request.Request(url, data=data, method=method, headers={
            "User-Agent": f"intgrads-zmq-client/{__version__}", **headers})
        deadline = time.monotonic() + limit
        try:
            with urllib.request.urlopen(request, timeout=min(limit, 60.0)) as response:
                name, lines = None, []
                while time.monotonic() < deadline:
                    raw = response.readline()
                    if not raw:  # the end of the stream
                        return
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        lines.append(line[5:].removeprefix(" "))
                    elif not line and name is not None:
                        yield name, json.loads("\n".join(lines))
                        name, lines = None, []
                raise RequestTimeout(url, limit)
        except urllib.error.HTTPError as err:
            with err:
                raw = _read_error_body(err)
            raise ApiError.from_response(err.code, str(err.reason), err.headers, raw) from None
        except urllib.error.URLError as err:
            raise ServerUnreachable(url, str(err.reason)) from None
        except TimeoutError:
            raise RequestTimeout(url, limit) from None

    def attribute_many(
        self,
        texts: Iterable[str],
        *,
        model: str | None = None,
        n_steps: int | str | None = None,
        tolerance: float | None = None,
        method: str | None = None,
        baseline: str | None = None,
        target: int | str | None = None,
        max_length: int | None = None,
        seed: int | None = None,
        fields: Iterable[str] | None = None,
        contrast: int | str | None = None,
        aggregate: str | None = None,
        metrics: Iterable[str] | None = None,
        format: str = "torch",
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Explain several texts in one request (``{"sequences": [...]}``).

        One request means one round trip and the server spreads the texts
        over its workers; the results come back in the order of ``texts``.
        Any failing text fails the whole request (its ``field`` names it as
        ``sequences[i]``).
        """
        texts = list(texts)
        body = {"sequences": texts, **_options(n_steps, method, baseline, target, max_length, seed, fields, tolerance,
                                                contrast, aggregate, metrics)}
        raw = self._post(model, body, format, timeout)
        return _decode_batch(raw, format)

    # -- service information ----------------------------------------------
    def models(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /models``: the served models, their labels, defaults and limits."""
        return json.loads(self._request("GET", "/models", timeout=timeout))

    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /healthz``: the HTTP process is alive (says nothing about workers)."""
        return json.loads(self._request("GET", "/healthz", timeout=timeout))

    def ready(self, *, timeout: float | None = None) -> bool:
        """``GET /readyz`` as a bool: True once every model has a ready worker.

        False, not an exception, when the server says "not ready" (503) or is
        not up yet (unreachable, timed out), so that ``while not
        client.ready(): sleep(1)`` works during start-up. Anything else (a
        404 from a wrong URL, say) still raises.
        """
        try:
            self._request("GET", "/readyz", timeout=timeout)
        except ApiError as exc:
            if exc.status == 503 or exc.status == 0:
                return False
            raise
        return True

    # -- HTTP ---------------------------------------------------------------
    def _post(self, model: str | None, body: dict[str, Any], fmt: str,
              timeout: float | None) -> bytes:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
        path = "/model/" if model is None else f"/model/{urllib.parse.quote(model, safe='')}/"
        data = json.dumps(body, allow_nan=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": _MEDIA_TYPES[fmt]}
        return self._request("POST", f"{path}?format={fmt}", data=data, headers=headers,
                             timeout=timeout)

    def _request(self, method: str, path: str, *, data: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float | None = None) -> bytes:
        """One exchange; returns the body of a 2xx answer, raises ApiError otherwise."""
        limit = self.timeout if timeout is None else float(timeout)
        url = self.base_url + path
        all_headers = {"User-Agent": f"intgrads-zmq-client/{__version__}", **(headers or {})}
        request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        deadline = time.monotonic() + limit
        try:
            with urllib.request.urlopen(request, timeout=limit) as response:
                return _read_all(response, deadline, url, limit)
        except urllib.error.HTTPError as err:
            with err:
                raw = _read_error_body(err)
            raise ApiError.from_response(err.code, str(err.reason), err.headers, raw) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise RequestTimeout(url, limit) from None
            raise ServerUnreachable(url, str(err.reason)) from None
        except TimeoutError:
            raise RequestTimeout(url, limit) from None
        except (ConnectionError, HTTPException, OSError) as err:
            raise ServerUnreachable(url, f"{type(err).__name__}: {err}") from None


class Job:
    """A job on the server (``POST /jobs/``), known by its id.

    Its state and result live in the server's broker, so any client (another
    process, another machine) holding the id can follow it or fetch the
    result. Results are kept for a while after the job ends (the broker's
    ``--job-ttl``); later, :meth:`result` raises an ApiError with status 410.
    """

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /jobs/{id}``: state, progress (done / total, eta_seconds), timings."""
        return json.loads(self.client._request("GET", f"/jobs/{self.id}", timeout=timeout))

    def cancel(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``DELETE /jobs/{id}``: stop it (a no-op once finished); returns the state."""
        return json.loads(self.client._request("DELETE", f"/jobs/{self.id}", timeout=timeout))

    def wait(self, *, progress: Progress | None = None, timeout: float | None = None,
             poll: float = POLL_SECONDS) -> dict[str, Any]:
        """Poll until the job has finished; ``progress`` gets each state seen."""
        limit = self.client.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + limit
        while True:
            state = self.status(timeout=max(0.1, min(limit, deadline - time.monotonic())))
            if progress is not None:
                progress({"state": state["state"], "position": state.get("position"), **state["progress"]})
            if state["state"] in FINISHED_STATES:
                return state
            if time.monotonic() + poll > deadline:
                raise RequestTimeout(self.client.base_url + f"/jobs/{self.id}", limit)
            time.sleep(poll)

    def result(self, *, format: str = "torch", progress: Progress | None = None,
               timeout: float | None = None, poll: float = POLL_SECONDS) -> dict[str, Any]:
        """Wait for the job (polling), then ``GET /jobs/{id}/result`` in ``format``.
        A failed or cancelled job raises its error as an :class:`ApiError`."""
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
        self.wait(progress=progress, timeout=timeout, poll=poll)
        raw = self.client._request("GET", f"/jobs/{self.id}/result?format={format}",
                                   headers={"Accept": _MEDIA_TYPES[format]}, timeout=timeout)
        return _decode_single(raw, format)


def _read_all(response: HTTPResponse, deadline: float, url: str, limit: float) -> bytes:
    """Read the whole body, giving up at the deadline (checked between chunks)."""
    parts = []
    while True:
        if time.monotonic() > deadline:
            raise RequestTimeout(url, limit)
        chunk = response.read(_READ_CHUNK)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def _read_error_body(err: urllib.error.HTTPError) -> bytes:
    try:
        return err.read(64 << 10)
    except (OSError, HTTPException):
        return b""


def _options(n_steps: int | str | None, method: str | None, baseline: str | None,
             target: int | str | None, max_length: int | None, seed: int | None,
             fields: Iterable[str] | None, tolerance: float | None = None,
             contrast: int | str | None = None, aggregate: str | None = None,
             metrics: Iterable[str] | None = None) -> dict[str, Any]:
    """The options that were set; unset ones stay out so server defaults apply.
    ``n_steps="auto"`` integrates adaptively to ``tolerance`` (relative)."""
    given = {"n_steps": n_steps, "method": method, "baseline": baseline, "target": target,
             "max_length": max_length, "seed": seed, "tolerance": tolerance,
             "contrast": contrast, "aggregate": aggregate}
    out = {k: v for k, v in given.items() if v is not None}
    if fields is not None:
        out["fields"] = [fields] if isinstance(fields, str) else list(fields)
    if metrics is not None:
        out["metrics"] = [metrics] if isinstance(metrics, str) else list(metrics)
    return out


# -- decoding ------------------------------------------------------------------


def _decode_single(raw: bytes, fmt: str) -> dict[str, Any]:
    try:
        if fmt == "torch":
            return _load_torch(raw)
        if fmt == "json":
            return json.loads(raw)
        tensors, meta = _load_safetensors(raw)
        return {**(meta if isinstance(meta, dict) else {}), **tensors}
    except ApiError:
        raise
    except Exception as exc:
        raise _bad_response(fmt, exc) from exc


def _decode_batch(raw: bytes, fmt: str) -> list[dict[str, Any]]:
    try:
        if fmt == "torch":
            return list(_load_torch(raw)["results"])
        if fmt == "json":
            return list(json.loads(raw)["results"])
        tensors, metas = _load_safetensors(raw)
        results = [dict(meta) for meta in metas]
        for key, tensor in tensors.items():
            index, _, name = key.partition(".")
            results[int(index)][name] = tensor
        return results
    except Exception as exc:
        raise _bad_response(fmt, exc) from exc


def _bad_response(fmt: str, exc: Exception) -> ApiError:
    return ApiError(200, "Bad response", f"could not decode the {fmt} body: {exc}",
                    code="bad_response")


def _load_torch(raw: bytes) -> dict[str, Any]:
    """gunzip + ``torch.load``; ``weights_only=True`` because the body is data,
    not code, and a pickle from the network must not run anything."""
    import torch

    return torch.load(io.BytesIO(gzip.decompress(raw)), weights_only=True)


def _load_safetensors(raw: bytes) -> tuple[dict[str, Any], Any]:
    """Tensors via ``safetensors.torch``; the ``intgrads`` metadata is parsed
    from the header by hand (the library's loader drops the metadata)."""
    from safetensors.torch import load

    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    meta_text = header.get("__metadata__", {}).get("intgrads")
    meta = json.loads(meta_text) if meta_text else {}
    return load(raw), meta
