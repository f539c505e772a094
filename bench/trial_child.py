"""The time trial's child process: one method, timed text by text.

Each method (our engine, or the original recipe) runs in its own persistent
interpreter, so its peak resident memory is its own. The parent
(:mod:`bench.trial_harness`) starts ``python -m bench.trial_child JOB`` and
talks to it over stdin/stdout, one JSON line per answer:

* after loading the model: ``{"tokens": [...], "rss_loaded_mib": ..., ...}``
* for each ``run I`` line: the seconds and outcome for text ``I``
* for ``stop``: the process's peak memory, then it exits.

Everything the libraries print goes to stderr, so it cannot corrupt the answers.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def max_rss_mib() -> float:
    """This process's resident-set high-water mark (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _planner(adapter: Any, dtype: str) -> Any:
    """A chunk planner exactly as a worker on this device builds it."""
    from intgrads_zmq.engine import ChunkPlanner

    return ChunkPlanner.for_device(adapter.device.type, dtype)


def recipe_batch(choice: str, planner: Any, adapter: Any, text: str, job: dict[str, Any]) -> int | None:
    """Captum's ``internal_batch_size``: our planner's chunk (fair), all steps
    at once (the original's ``None``), or a fixed number of steps."""
    if choice == "all":
        return None
    if choice == "engine":
        tokens = adapter.encode(text, job["length"]).length
        return planner.chunk_steps(adapter.size_hints(), tokens, job["n_steps"], "float32")
    return int(choice)


def _ours(adapter: Any, job: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    from intgrads_zmq.engine import attribute
    from intgrads_zmq.options import AttributionOptions

    options = AttributionOptions(n_steps=job["n_steps"], method=job["method"],
                                 baseline=job["baseline"], max_length=job["length"],
                                 seed=job["seed"])
    planner = _planner(adapter, job["dtype"])

    def ours(text: str) -> dict[str, Any]:
        result = attribute(adapter, text, options, planner=planner, dtype=job["dtype"])
        return {"target": result.meta["target"], "ig_sum": result.meta["attribution_sum"],
                "chunk": result.meta["timings"]["chunk_steps"]}

    return ours


def _recipe(adapter: Any, job: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    from intgrads_zmq.testing.reference import OriginalRecipe

    recipe = OriginalRecipe(adapter)
    planner = _planner(adapter, "float32")
    # Chosen before timing, so the recipe's clock does not pay for the extra tokenising.
    batches = {text: recipe_batch(job["recipe_batch"], planner, adapter, text, job)
               for text in job["texts"]}

    def original(text: str) -> dict[str, Any]:
        batch = batches[text]
        out = recipe.run(text, max_length=job["length"], baseline=job["baseline"],
                         seed=job["seed"], n_steps=job["n_steps"], method=job["method"],
                         batch=batch)
        total = float(out["integrated_gradients"].double().sum())
        return {"target": out["target"], "ig_sum": total, "chunk": batch or job["n_steps"]}

    return original


RUNNERS = {"ours": _ours, "recipe": _recipe}


def _load(job: dict[str, Any]) -> Any:
    """Threads and allocator set as a worker sets them, then the model."""
    import torch

    from intgrads_zmq.models.loader import load_model
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.service.tuning import tune_malloc

    tune_malloc()  # as workers do; applied to both methods alike
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    return load_model(ModelSpec.from_dict(job["model"]), torch.device(job["device"]))


def serve(job_path: str) -> None:
    """Load the model, then time texts as the parent asks (see the module docstring)."""
    job = json.loads(Path(job_path).read_text())
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints must not corrupt the answers
    if job["threads"]:
        os.environ["OMP_NUM_THREADS"] = str(job["threads"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    adapter = _load(job)
    device = torch.device(job["device"])
    texts = job["texts"]
    run = RUNNERS[job["run"]](adapter, job)
    tokens = [adapter.encode(text, job["length"]).length for text in texts]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reply.write(json.dumps({
        "tokens": tokens, "rss_loaded_mib": max_rss_mib(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "hints": adapter.size_hints(),
        "adapter": f"{type(adapter).__name__} over {type(adapter.model).__name__}",
    }) + "\n")
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ["run"]:
            started = time.perf_counter()
            outcome = run(texts[int(command[1])])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            reply.write(json.dumps({"seconds": time.perf_counter() - started, **outcome}) + "\n")
        elif command[:1] == ["stop"]:
            gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            reply.write(json.dumps({"rss_peak_mib": max_rss_mib(), "gpu_peak_mib": gpu}) + "\n")
            return


if __name__ == "__main__":
    serve(sys.argv[1])
