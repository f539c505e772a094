"""What the broker costs: added latency per request, and K-worker throughput.

1. Latency: a tiny model and a short input, the same request through broker +
   worker (ZeroMQ, two hops each way, tensors as raw frames) and through the
   engine called in this process with the same thread count. Prints the
   added latency at the median (target: under 2 ms).
2. Throughput: many short requests kept in flight against 1 worker and
   against K workers (each owning its share of the cores). Prints the
   K-worker speedup.

    python bench/broker_overhead.py [--requests 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.service.devices import available_cores
from intgrads_zmq.testing.stack import start_broker
from intgrads_zmq.testing.tiny_models import make_tiny_bert

TEXT = "a great film , not boring !"
OPTIONS = {"n_steps": 8}


def latency_in_process(folder: Path, count: int, threads: int) -> list[float]:
    import torch

    from intgrads_zmq.engine import attribute
    from intgrads_zmq.models.loader import load_model
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.options import AttributionOptions

    torch.set_num_threads(threads)
    adapter = load_model(ModelSpec(kind="hf", path=str(folder), name="tiny"), torch.device("cpu"))
    options = AttributionOptions(**OPTIONS)
    for _ in range(10):
        attribute(adapter, TEXT, options)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        attribute(adapter, TEXT, options)
        samples.append(time.perf_counter() - started)
    return samples


def latency_through_broker(client: BrokerClient, count: int) -> list[float]:
    for _ in range(10):
        client.attribute(TEXT, options=OPTIONS)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        client.attribute(TEXT, options=OPTIONS)
        samples.append(time.perf_counter() - started)
    return samples


def throughput(client: BrokerClient, count: int, in_flight: int) -> float:
    """Requests per second with ``in_flight`` requests kept outstanding."""
    started = time.perf_counter()
    done = 0
    while done < count:
        batch = min(in_flight, count - done)
        ids = [client.submit(TEXT, options=OPTIONS) for _ in range(batch)]
        client.wait(ids, 60)
        done += batch
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    folder = make_tiny_bert(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny")

    one = start_broker(["--model", str(folder), "--name", "tiny"], workers=1)
    try:
        one.wait_ready()
        threads = len(available_cores())  # one worker owns every core
        with BrokerClient(one.frontend) as client:
            remote = latency_through_broker(client, args.requests)
            single = throughput(client, args.requests, in_flight=8)
    finally:
        one.stop()
    local = latency_in_process(folder, args.requests, threads)

    many = start_broker(["--model", str(folder), "--name", "tiny"], workers=args.workers)
    try:
        many.wait_ready()
        with BrokerClient(many.frontend) as client:
            throughput(client, 20, in_flight=8)
            multi = throughput(client, args.requests, in_flight=8)
    finally:
        many.stop()

    med_remote, med_local = statistics.median(remote), statistics.median(local)
    print(f"tiny BERT, {len(TEXT.split())} words, n_steps {OPTIONS['n_steps']}, {args.requests} requests")
    print(f"engine in-process   median {med_local * 1e3:7.2f} ms ({threads} threads)")
    print(f"through the broker  median {med_remote * 1e3:7.2f} ms  p90 "
          f"{statistics.quantiles(remote, n=10)[-1] * 1e3:.2f} ms")
    print(f"throughput: 1 worker {single:.0f} req/s, {args.workers} workers {multi:.0f} req/s")
    print(f"{args.workers}-worker speedup: {multi / single:.2f}x")
    print(f"added latency per request (median): {(med_remote - med_local) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
