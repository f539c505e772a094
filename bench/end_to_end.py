"""End-to-end overhead: curl -> gunicorn -> broker -> worker vs the engine in-process.

Same 128-token request on the demo model, alternating, median of --repeats.
Prints the end-to-end overhead as a fraction of compute (target: <= 5%) per
request (curl's total minus the compute time the worker reports in the
Server-Timing header) and as a difference of medians, and
the time to encode a 512-token, 50-step response (the default gzip'd torch
dict) with our encoder against torch.save + gzip level 9 (the original's way).

    python bench/end_to_end.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from intgrads_zmq.testing.stack import start_broker, start_frontend

REVIEW = ("The film opens with a long, quiet scene on a farm and it takes its time, but the acting is "
          "wonderful, the music is moving and the ending stayed with me for days. Some of the middle "
          "drags and one subplot about a missing letter goes nowhere, yet the two leads carry it. ")


def curl_seconds(url: str, body: dict) -> tuple[float, float]:
    """(total seconds as curl saw them, the worker's compute seconds for that request)."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %header{server-timing}", url,
         "-d", json.dumps(body)],
        capture_output=True, text=True, check=True,
    )
    code, seconds, timing = out.stdout.split(maxsplit=2)
    if code != "200":
        raise RuntimeError(f"HTTP {code}")
    compute_ms = float(timing.split("dur=")[1])
    return float(seconds), compute_ms / 1000


def encode_comparison() -> tuple[float, float, int, int]:
    """Seconds and sizes: our encoder vs torch.save + gzip -9, 512 tokens x 50 steps."""
    import torch

    from intgrads_zmq.encoding import encode
    from intgrads_zmq.engine import attribute
    from intgrads_zmq.models.loader import load_model
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.options import AttributionOptions
    from intgrads_zmq.payload import AttributionPayload
    from intgrads_zmq.service.worker import raw_tensors

    adapter = load_model(ModelSpec(), torch.device("cpu"))
    result = attribute(adapter, REVIEW * 9, AttributionOptions(n_steps=50, max_length=512), dtype="bf16")
    assert len(result.meta["tokens"]) == 512
    payload = AttributionPayload(meta=result.meta, tensors=raw_tensors(result.tensors))
    started = time.perf_counter()
    ours = encode([payload], "torch", batch=False).body
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    buffer = io.BytesIO()
    torch.save({**result.tensors, "tokens": result.meta["tokens"]}, buffer)
    theirs = gzip.compress(buffer.getvalue(), compresslevel=9)
    theirs_seconds = time.perf_counter() - started
    return ours_seconds, theirs_seconds, len(ours), len(theirs)


def in_process_runner():
    """The engine in this process, as a worker runs it (same tuning, all cores)."""
    import torch

    from intgrads_zmq.engine import attribute
    from intgrads_zmq.models.loader import load_model
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.options import AttributionOptions
    from intgrads_zmq.service.tuning import tune_malloc

    tune_malloc()
    adapter = load_model(ModelSpec(), torch.device("cpu"))
    options = AttributionOptions(n_steps=50, max_length=128)

    def run() -> float:
        started = time.perf_counter()
        result = attribute(adapter, REVIEW * 3, options)
        assert len(result.meta["tokens"]) == 128
        return time.perf_counter() - started

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    broker = start_broker([], workers=1, folder=folder)
    frontend = None
    try:
        broker.wait_ready()
        frontend = start_frontend(broker.frontend, folder=folder)
        body = {"sequence": REVIEW * 3, "n_steps": 50, "max_length": 128}
        run_local = in_process_runner()
        curl_seconds(frontend.url + "/model/", body)
        run_local()  # warm both
        http, local = [], []
        for _ in range(args.repeats):  # alternate; the idle side only heartbeats
            http.append(curl_seconds(frontend.url + "/model/", body))
            local.append(run_local())
    finally:
        if frontend:
            frontend.stop()
        broker.stop()
    ours, theirs, ours_size, theirs_size = encode_comparison()
    med_http, med_local = statistics.median(t for t, _ in http), statistics.median(local)
    paired = statistics.median((t - c) / c for t, c in http)
    print(f"demo model, 128 tokens, 50 steps, float32, {args.repeats} requests each")
    print(f"engine in-process          median {med_local:.3f} s")
    print(f"curl -> gunicorn -> broker  median {med_http:.3f} s")
    print(f"encode 512 tokens x 50 steps: ours {ours * 1e3:.0f} ms ({ours_size / 1e6:.1f} MB), "
          f"torch.save + gzip -9 {theirs * 1e3:.0f} ms ({theirs_size / 1e6:.1f} MB): {theirs / ours:.1f}x faster")
    print(f"median of medians: {(med_http - med_local) / med_local:+.1%} (compute itself varies by a few %)")
    print(f"end-to-end overhead: {paired:.1%} of compute (per request: curl's total minus the worker's "
          "compute, from Server-Timing)")


if __name__ == "__main__":
    main()
