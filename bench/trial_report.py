"""The time trial's report: a header, a markdown table and notes on reading it."""

from __future__ import annotations

import os
import statistics
from typing import Any

OURS = "intgrads-zmq (one pass, 4 outputs)"
RECIPE = ("original recipe (Captum LayerIntegratedGradients + separate "
          "intermediate-gradients pass)")


def _row(label: str, result: dict[str, Any], speedup: str) -> list[str]:
    seconds = result["seconds"]
    tokens = result["tokens"]
    token_text = (f"{statistics.mean(tokens):.0f}" if min(tokens) == max(tokens)
                  else f"{statistics.mean(tokens):.0f} ({min(tokens)}-{max(tokens)})")
    memory = f"{result['rss_peak_mib']:.0f} (+{result['rss_peak_mib'] - result['rss_loaded_mib']:.0f})"
    if result.get("gpu_peak_mib") is not None:
        memory += f"; GPU {result['gpu_peak_mib']:.0f}"
    return [label, f"{statistics.median(seconds):.2f}", f"{min(seconds):.2f}", f"{max(seconds):.2f}",
            f"{len(seconds) / sum(seconds):.3f}", memory, token_text,
            ", ".join(str(c) for c in result["chunks"]), speedup]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows)])


def report(job: dict[str, Any], results: dict[str, dict[str, Any]], loads: tuple[float, float],
           distinct: int, source: str) -> str:
    """The header, the table and the notes that say how to read it."""
    ours = results["ours"]
    recipe = results.get("recipe")
    model = job["model"]
    lines = [
        "# intgrads-zmq time trial",
        "",
        f"- model: {model['name']} ({model['kind']}{': ' + model['path'] if model.get('path') else ''}); "
        f"{ours['adapter']}; hidden {ours['hints']['hidden']}, layers {ours['hints']['layers']}",
        f"- inputs: {len(job['texts'])} texts ({distinct} distinct) from {source}; max_length "
        f"{job['length']} tokens (longer texts truncated, as the original did)",
        f"- path: n_steps {job['n_steps']}, {job['method']}, baseline {job['baseline']}, "
        f"target = the predicted class, seed {job['seed']}",
        f"- device: {job['device']}, torch {ours['torch']}, {ours['threads']} threads; dtype: ours "
        f"{job['dtype']}, recipe float32",
        f"- timing: {job['repeats']} repeat(s) of every text"
        f"{' after 1 untimed warm-up example' if job['warmup'] else ''} per method; "
        f"1-minute load average before {loads[0]:.2f}, after {loads[1]:.2f} "
        f"({os.cpu_count()} CPUs; other processes may share them)",
        "",
    ]
    header = ["method", "s/example median", "min", "max", "examples/s",
              "peak RSS MiB (+ over loaded model)", "tokens/example", "steps per batch",
              "speed-up"]
    rows = []
    if recipe is not None:
        ratio = statistics.median(recipe["seconds"]) / statistics.median(ours["seconds"])
        rows.append(_row(OURS, ours, f"{ratio:.2f}x"))
        rows.append(_row(RECIPE, recipe, "1.00x"))
    else:
        rows.append(_row(OURS, ours, "-"))
    lines.append(_markdown(header, rows))
    lines += ["", *_notes(job, ours, recipe)]
    return "\n".join(lines)


def _notes(job: dict[str, Any], ours: dict[str, Any], recipe: dict[str, Any] | None) -> list[str]:
    notes = [
        "Peak RSS: ru_maxrss of each method's own subprocess (model, tokenizer, inputs and all "
        "work); '+' is how far the work raised it above the high-water mark after loading the "
        "model and tokenising the inputs. It is the process's own peak, not a sum over methods.",
        "Each method runs in its own persistent subprocess; runs alternate text by text "
        "(who goes first swaps every text), so load from other processes hits both alike.",
        "Seconds per example include tokenising, picking the target and building all outputs "
        "(CPU float32 tensors), not loading the model.",
    ]
    if recipe is None:
        return notes
    batch = {"engine": "the same number of steps per batch as our engine's planner picks "
                       "(fair; internal_batch_size and the intermediate pass both use it)",
             "all": "all steps in one batch (internal_batch_size=None), as the original ran"}
    notes.append("Recipe batching: " + batch.get(job["recipe_batch"], f"{job['recipe_batch']} steps "
                                                                      "per batch"))
    total_ratio = sum(recipe["seconds"]) / sum(ours["seconds"])
    notes.append(f"Speed-up = recipe median / ours median; by total time it is {total_ratio:.2f}x.")
    same_target = ours["targets"] == recipe["targets"]
    diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours["ig_sums"], recipe["ig_sums"], strict=True)]
    notes.append(f"Same work: targets {'agree' if same_target else 'DIFFER'}; sum of integrated "
                 f"gradients per text agrees within {max(diffs):.1e} (relative)"
                 + (" (riemann_trapezoid: Captum's weights sum to (n-1)/n)"
                    if job["method"] == "riemann_trapezoid" else "")
                 + (" (ours in bf16)" if job["dtype"] == "bf16" else "") + ".")
    return notes
