"""Accuracy against time: our ``n_steps: "auto"`` against Captum at fixed steps.

On the demo model, per input and baseline: the per-token relative error
||a - a_ref||_2 / ||a_ref||_2 against a converged reference (our engine, 256
Gauss-Legendre steps, float32), the time, and the steps paid, for

- ours, ``n_steps: "auto"`` at ``--tolerance``;
- Captum ``LayerIntegratedGradients`` at its default (50 Gauss-Legendre steps);
- Captum at the smallest fixed n (from a ladder) that meets the tolerance on
  every input of the set: what a careful user would have to pick. The search
  runs our engine's Gauss-Legendre (the same nodes and weights as Captum's).

Inputs: real review sentences (tests/data/*.jsonl) and review-like texts cut
to 128 and 512 tokens (bench/texts.py; max_length = the length). Each measurement runs once, inputs
interleaved, so a busy machine slows every contestant alike. Writes a plot
of error against time; the last line printed is the pad ratio
(Captum default time / ours).

    .venv/bin/python bench/accuracy_vs_time.py --examples 20 --lengths 128:3,512:1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from texts import review_texts

from intgrads_zmq.engine import ChunkPlanner, attribute
from intgrads_zmq.engine.baselines import TOKEN_BASELINES, make_baseline
from intgrads_zmq.models.loader import load_model
from intgrads_zmq.models.spec import ModelSpec
from intgrads_zmq.options import AttributionOptions
from intgrads_zmq.testing.reference import OriginalRecipe

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
LADDER = (8, 12, 16, 20, 24, 32, 40, 50, 64, 80, 100, 128, 160, 200, 256)
IG_ONLY = ("integrated_gradients",)


def sentences(count: int) -> list[str]:
    rows = []
    for name in ("movie_reviews_test.jsonl", "movie_reviews_tune.jsonl"):
        rows += [json.loads(line)["text"] for line in (DATA / name).read_text().splitlines() if line.strip()]
    return rows[:count]


def inputs(examples: int, lengths: str) -> list[tuple[str, str]]:
    """(length label, text) pairs: short real sentences, then long review-like texts."""
    out = [("short", t) for t in sentences(examples)]
    for part in filter(None, lengths.split(",")):
        length, _, count = part.partition(":")
        out += [(length, t) for t in review_texts(int(count or 1), length=int(length), seed=7)]
    return out


class Contest:
    """One input and baseline: the reference, then each contestant's error and time."""

    def __init__(self, adapter, recipe: OriginalRecipe, text: str, baseline: str, max_length: int) -> None:
        self.adapter, self.recipe, self.text, self.baseline = adapter, recipe, text, baseline
        self.max_length = max_length
        ref = self.ours(AttributionOptions(n_steps=256, baseline=baseline, fields=IG_ONLY, max_length=max_length))
        self.target = ref.meta["target"]
        self.reference = np.array(ref.meta["attributions"])
        self.tokens = len(ref.meta["tokens"])

    def ours(self, options: AttributionOptions):
        return attribute(self.adapter, self.text, options, planner=ChunkPlanner.for_device("cpu", "float32"))

    def error(self, attributions) -> float:
        a = np.asarray(attributions, dtype=np.float64)
        return float(np.linalg.norm(a - self.reference) / np.linalg.norm(self.reference))

    def auto(self, tolerance: float) -> dict:
        options = AttributionOptions(n_steps="auto", tolerance=tolerance, baseline=self.baseline,
                                     max_length=self.max_length)  # all four outputs, as a default request
        started = time.perf_counter()
        meta = self.ours(options).meta
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "steps": meta["n_steps"], "error": self.error(meta["attributions"]),
                "estimate": meta["error_estimate"], "converged": meta["converged"]}

    def fixed_error(self, n: int) -> float:
        options = AttributionOptions(n_steps=n, baseline=self.baseline, fields=IG_ONLY, max_length=self.max_length)
        return self.error(self.ours(options).meta["attributions"])

    def smallest_n(self, tolerance: float) -> int:
        """Smallest ladder n meeting the tolerance here (binary search; error falls with n)."""
        low, high = 0, len(LADDER) - 1
        while low < high:
            middle = (low + high) // 2
            if self.fixed_error(LADDER[middle]) <= tolerance:
                high = middle
            else:
                low = middle + 1
        return LADDER[low]

    def captum(self, n: int) -> dict:
        encoded = self.adapter.encode(self.text, self.max_length)
        tensor = None
        if self.baseline not in TOKEN_BASELINES:
            layer_input = self.adapter.layer_output(encoded.input_ids, encoded).float()
            tensor = make_baseline(self.adapter, encoded, self.baseline, 0, layer_input)
        planner = ChunkPlanner.for_device("cpu", "float32")
        batch = planner.chunk_steps(self.adapter.size_hints(), self.tokens, n, "float32")
        started = time.perf_counter()
        ig = self.recipe.integrated_gradients(
            self.text, target=self.target, n_steps=n, method="gausslegendre", baseline_kind=self.baseline,
            baseline_tensor=tensor, max_length=self.max_length, batch=batch,
        )
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "steps": n, "error": self.error(ig[0].sum(-1).double().numpy())}


def summarise(rows: list[dict], tolerance: float) -> dict:
    errors = [r["error"] for r in rows]
    return {
        "inputs": len(rows),
        "steps_median": statistics.median(r["steps"] for r in rows),
        "steps_max": max(r["steps"] for r in rows),
        "seconds_total": sum(r["seconds"] for r in rows),
        "error_median": statistics.median(errors),
        "error_max": max(errors),
        "within_tolerance": sum(e <= tolerance for e in errors) / len(errors),
    }


def plot(results: dict, path: Path, tolerance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    styles = {"ours auto": ("o", "tab:blue"), "captum 50": ("s", "tab:red"), "captum n_min": ("^", "tab:orange")}
    for ax, (baseline, by_name) in zip(axes[0], results.items(), strict=True):
        for name, rows in by_name.items():
            marker, colour = styles[name]
            label = name if name != "captum n_min" else f"captum n={rows[0]['steps']}"
            ax.scatter([r["seconds"] for r in rows], [max(r["error"], 1e-7) for r in rows], marker=marker,
                       color=colour, label=label, alpha=0.7, s=18)
        ax.axhline(tolerance, color="grey", linestyle="--", linewidth=0.8)
        ax.set(xscale="log", yscale="log", xlabel="seconds per input", ylabel="per-token relative error",
               title=f"baseline {baseline}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=20, help="short real review sentences")
    parser.add_argument("--lengths", default="128:3,512:1", help="LENGTH:COUNT of long review-like texts")
    parser.add_argument("--baselines", default="pad,zero")
    parser.add_argument("--long-baselines", default="pad,zero",
                        help="baselines that also run the long inputs (the others: short sentences only)")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--plot", default=str(Path(__file__).resolve().parent / "results" / "accuracy_vs_time.png"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    adapter = load_model(ModelSpec(), torch.device("cpu"))
    recipe = OriginalRecipe(adapter)
    cases = inputs(args.examples, args.lengths)
    print(f"demo model, {len(cases)} inputs ({args.examples} short, {args.lengths}), tolerance {args.tolerance:g}, "
          f"reference: ours 256 Gauss-Legendre steps, float32, {torch.get_num_threads()} threads", flush=True)
    results: dict = {}
    for baseline in args.baselines.split(","):
        chosen = [(length, text) for length, text in cases
                  if length == "short" or baseline in args.long_baselines.split(",")]
        contests = [Contest(adapter, recipe, text, baseline, 512 if length == "short" else int(length))
                    for length, text in chosen]
        n_min = max(c.smallest_n(args.tolerance) for c in contests)
        contests[0].auto(args.tolerance), contests[0].captum(n_min)  # warm-up, untimed
        rows: dict = {"ours auto": [], "captum 50": [], "captum n_min": []}
        for (length, _), contest in zip(chosen, contests, strict=True):
            for name, run in (("ours auto", lambda c=contest: c.auto(args.tolerance)),
                              ("captum 50", lambda c=contest: c.captum(50)),
                              ("captum n_min", lambda c=contest, n=n_min: c.captum(n))):
                row = run() | {"length": length, "tokens": contest.tokens}
                rows[name].append(row)
            print(f"  {baseline} {length:>5} {contest.tokens:4d} tokens: " + "; ".join(
                f"{n} {r[-1]['steps']} steps {r[-1]['seconds']:.2f}s err {r[-1]['error']:.1e}" for n, r in rows.items()),
                flush=True)  # fmt: skip
        results[baseline] = rows
        print(f"baseline {baseline}: smallest fixed n meeting {args.tolerance:g} on every input: {n_min}")
        for name, group in rows.items():
            for length in dict.fromkeys(r["length"] for r in group):
                s = summarise([r for r in group if r["length"] == length], args.tolerance)
                print(f"  {name:13s} {length:>5}: {s['inputs']:2d} inputs, steps median {s['steps_median']:g} "
                      f"max {s['steps_max']}, {s['seconds_total']:.2f} s, error median {s['error_median']:.1e} "
                      f"max {s['error_max']:.1e}, within tolerance {100 * s['within_tolerance']:.0f} %")
            s = summarise(group, args.tolerance)
            print(f"  {name:13s}   all: {s['seconds_total']:.2f} s, error median {s['error_median']:.1e}, "
                  f"within tolerance {100 * s['within_tolerance']:.0f} %")
        ours = sum(r["seconds"] for r in rows["ours auto"])
        print(f"  time ratio captum 50 / ours auto: {sum(r['seconds'] for r in rows['captum 50']) / ours:.2f}x; "
              f"captum n={n_min} / ours auto: {sum(r['seconds'] for r in rows['captum n_min']) / ours:.2f}x",
              flush=True)  # fmt: skip
    path = Path(args.plot)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot(results, path, args.tolerance)
    print(f"plot: {path}")
    if "pad" in results:
        pad = results["pad"]
        ratio = sum(r["seconds"] for r in pad["captum 50"]) / sum(r["seconds"] for r in pad["ours auto"])
        print(f"pad: captum default (50 steps) time / ours auto time = {ratio:.2f}")


if __name__ == "__main__":
    main()
