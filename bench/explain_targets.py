"""``target: "all"`` against one single target, on small BERTs with 2 and 5 classes.

"all" shares the path points and the forward passes and pays one backward
per class on the same graph, so it should cost well under C times one
target: about (F + C B) / (C (F + B)) for a forward F and a backward B (the
parameters are frozen, so a backward computes input gradients only: B is
about F, and the ratio tends to 1/2). This prints, for each class count, the
median and the fastest seconds of "all" and of one target (same process,
same input, alternating runs) and the ratio all / (C x single) of each: on a
shared machine the fastest runs are the ones least disturbed.

The models are random BERTs built on the spot like the tests' tiny ones but
large enough for the compute to dominate (hidden 256, 4 layers, 4 heads,
FFN 512), loaded as a worker loads them; the input is 128 tokens.

    python bench/explain_targets.py [--steps 32] [--tokens 128] [--repeats 7] [--classes 2 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intgrads_zmq.engine import ChunkPlanner, attribute
from intgrads_zmq.models.loader import load_model
from intgrads_zmq.models.spec import ModelSpec
from intgrads_zmq.options import AttributionOptions
from intgrads_zmq.service.tuning import tune_malloc
from intgrads_zmq.testing.tiny_models import WORDS, make_tiny_bert

HIDDEN, LAYERS, HEADS = 256, 4, 4


def build(folder: Path, classes: int) -> object:
    labels = tuple(f"class_{i}" for i in range(classes))
    make_tiny_bert(folder, labels=labels, hidden=HIDDEN, layers=LAYERS, heads=HEADS, seed=classes)
    return load_model(ModelSpec(kind="hf", path=str(folder), name=f"bert{classes}"), torch.device("cpu"))


def text_of(tokens: int) -> str:
    """Enough words to fill ``tokens`` (truncated to exactly that many)."""
    generator = torch.Generator().manual_seed(1)
    picks = torch.randint(len(WORDS), (tokens * 2,), generator=generator)
    return " ".join(WORDS[i] for i in picks)


def time_once(adapter: object, text: str, options: AttributionOptions, planner: ChunkPlanner) -> float:
    started = time.perf_counter()
    result = attribute(adapter, text, options, planner=planner)
    took = time.perf_counter() - started
    assert result.tensors["integrated_gradients"].shape[-2] > 0
    return took


def measure(classes: int, steps: int, tokens: int, repeats: int, fields: tuple[str, ...]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        adapter = build(Path(folder), classes)
    text = text_of(tokens)
    common = {"n_steps": steps, "max_length": tokens, "baseline": "pad", "fields": fields}
    every = AttributionOptions(**common, target="all")
    single = AttributionOptions(**common, target=0)
    planner = ChunkPlanner.for_device("cpu", "float32")
    time_once(adapter, text, single, planner)  # warm-up: allocator, kernels
    time_once(adapter, text, every, planner)
    all_times, single_times = [], []
    for _ in range(repeats):  # alternating, so drifts of a shared machine hit both
        single_times.append(time_once(adapter, text, single, planner))
        all_times.append(time_once(adapter, text, every, planner))
    all_s, single_s = statistics.median(all_times), statistics.median(single_times)
    fastest_all, fastest_single = min(all_times), min(single_times)
    return {"classes": classes, "all": all_s, "single": single_s, "ratio": all_s / (classes * single_s),
            "fastest_all": fastest_all, "fastest_single": fastest_single,
            "fastest_ratio": fastest_all / (classes * fastest_single)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--all-fields", action="store_true",
                        help="keep all four tensors (default: integrated_gradients only)")
    args = parser.parse_args()
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = ("integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates") \
        if args.all_fields else ("integrated_gradients",)
    print(f"BERT hidden {HIDDEN}, {LAYERS} layers; {args.tokens} tokens, {args.steps} steps, "
          f"fields {','.join(fields)}; torch threads {torch.get_num_threads()}; {args.repeats} runs each")
    print(f"{'classes':>7} {'all (s)':>14} {'single (s)':>14} {'all/(C x single)':>18}")
    print(f"{'':>7} {'median  min':>14} {'median  min':>14} {'median   min':>18}")
    for classes in args.classes:
        row = measure(classes, args.steps, args.tokens, args.repeats, fields)
        print(f"{classes:>7} {row['all']:>7.3f}{row['fastest_all']:>7.3f} "
              f"{row['single']:>7.3f}{row['fastest_single']:>7.3f} "
              f"{row['ratio']:>11.3f}{row['fastest_ratio']:>7.3f}")


if __name__ == "__main__":
    main()
