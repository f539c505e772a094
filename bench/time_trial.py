"""Time trial: our one-pass engine against the original server's recipe.

The original server shipped a time trial over 1,855 IMDB reviews of 512
tokens, each explained by Captum's ``LayerIntegratedGradients`` *and* by the
``intermediate-gradients`` package (a second full pass over the path for the
per-step gradients, step sizes and intermediates). This script times the same
work both ways on the same inputs, model and target:

* ``intgrads-zmq (one pass, 4 outputs)``: :func:`intgrads_zmq.engine.attribute`
  with a chunk planner set up as a CPU worker sets it up;
* ``original recipe``: Captum LIG for the integrated gradients plus a minimal
  re-implementation of ``LayerIntermediateGradients`` (scaled features fed
  through a forward hook on the attributed layer, ``torch.autograd.grad`` per
  batch of steps), in float32, as the original ran.

Each method runs in its own persistent subprocess, so its peak resident
memory (``ru_maxrss``) is its own and not the other method's high-water mark;
the parent hands the texts to the two alternately, so that load from other
processes on a shared machine hits both methods alike. Progress goes to
stderr; the result table (markdown) to stdout.

    python -m bench.time_trial --examples 4 --length 512 --vs-captum
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file (python bench/time_trial.py)
    sys.path.insert(0, str(REPO))

import click  # noqa: E402

from bench.texts import read_texts, review_texts  # noqa: E402
from intgrads_zmq.cli import model_source_options  # noqa: E402
from intgrads_zmq.options import BASELINES, METHODS  # noqa: E402

OURS = "intgrads-zmq (one pass, 4 outputs)"
RECIPE = ("original recipe (Captum LayerIntegratedGradients + separate "
          "intermediate-gradients pass)")
LABELS = {"ours": OURS, "recipe": RECIPE}
MARKER = -1  # baseline id meaning "use the tensor baseline" (zero, rand-*)


# --- the original recipe ------------------------------------------------------

def _make_tap() -> Any:
    """The tap module; defined on first use, so the CLI starts without torch."""
    import torch

    class Tap(torch.nn.Module):
        """Identity on the attributed layer's output: the layer Captum hooks.

        Captum takes baselines as input ids only; for the tensor baselines
        (zero, rand-*) the marker id batch makes this emit the baseline
        tensor, so Captum reads x' in the layer's output space like ours.
        """

        def __init__(self) -> None:
            super().__init__()
            self.baseline: torch.Tensor | None = None

        def forward(self, embedded: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            if self.baseline is not None and bool((ids == MARKER).all()):
                return self.baseline.expand_as(embedded)
            return embedded

    return Tap()


class OriginalRecipe:
    """What the original server computed per text, on the model's own forward.

    ``LayerIntegratedGradients(forward, layer).attribute(...)`` for the
    integrated gradients, then a second pass over the same path for the
    intermediate gradients, as ``LayerIntermediateGradients`` did: evaluate
    the layer for the input and the baseline, concatenate every scaled point
    ``x' + a (x - x')``, push them through the model with a forward hook that
    replaces the layer's output, and ``torch.autograd.grad`` the target logit
    (one batch of ``batch`` steps at a time; the original used all at once).
    """

    def __init__(self, adapter: Any) -> None:
        from captum.attr import LayerIntegratedGradients

        self.adapter = adapter
        self.model = adapter.model
        self.tap = _make_tap()
        self.inputs_embeds = adapter.kind == "inputs_embeds"
        self.keys: tuple[str, ...] = ()
        self._ids: Any = None
        self.lig = LayerIntegratedGradients(self.forward, self.tap)

    def forward(self, ids: Any, *extras: Any) -> Any:
        """Logits from the model's own forward; the layer output passes the tap."""
        kwargs = dict(zip(self.keys, extras, strict=True))
        real = ids.clamp_min(0)
        if self.inputs_embeds:  # XLNet & co: the word embeddings feed inputs_embeds
            points = self.tap(self.adapter.layer(real), ids)
            out = self.model(inputs_embeds=points, **kwargs, **self.adapter.fixed_inputs)
        else:
            self._ids = ids
            out = self.model(input_ids=real, **kwargs)
        logits = getattr(out, "logits", None)
        return logits if logits is not None else (out[0] if isinstance(out, (tuple, list)) else out)

    @contextmanager
    def _tapped(self) -> Iterator[None]:
        """Route the embeddings module's output through the tap while running."""
        if self.inputs_embeds:
            yield
            return

        def through_tap(_module: Any, _inputs: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (self.tap(output[0], self._ids), *output[1:])
            return self.tap(output, self._ids)

        handle = self.adapter.layer.register_forward_hook(through_tap)
        try:
            yield
        finally:
            handle.remove()

    def run(self, text: str, *, max_length: int, baseline: str, seed: int, n_steps: int,
            method: str, batch: int | None, target: int | None = None) -> dict[str, Any]:
        """The four outputs (CPU float32) plus the target used."""
        import torch

        from intgrads_zmq.engine.baselines import TOKEN_BASELINES, make_baseline

        encoded = self.adapter.encode(text, max_length)
        self.keys = tuple(sorted(encoded.extras))
        extras = tuple(encoded.extras[k] for k in self.keys)
        ids = encoded.input_ids
        if baseline in TOKEN_BASELINES:
            self.tap.baseline = None
            base_ids = torch.full_like(ids, self.adapter.special_token_id(baseline))
        else:
            layer_input = self.adapter.layer_output(ids, encoded).float()
            self.tap.baseline = make_baseline(self.adapter, encoded, baseline, seed, layer_input)
            base_ids = torch.full_like(ids, MARKER)
        with self._tapped():
            if target is None:
                with torch.no_grad():
                    target = int(self.forward(ids, *extras)[0].argmax())
            grads, step_sizes, intermediates = self._intermediate_pass(
                ids, base_ids, extras, target, n_steps, method, batch
            )
            integrated = self.lig.attribute(
                ids, baselines=base_ids, additional_forward_args=extras, target=target,
                n_steps=n_steps, method=method, internal_batch_size=batch,
            )
        return {
            "integrated_gradients": integrated.detach().float().cpu(),
            "intermediate_gradients": grads.cpu(),
            "step_sizes": step_sizes,
            "intermediates": intermediates.cpu(),
            "target": target,
        }

    def _layer_value(self, ids: Any, extras: tuple[Any, ...]) -> Any:
        """The tap's output for these ids (Captum's ``_forward_layer_eval``)."""
        import torch

        captured: list[Any] = []
        handle = self.tap.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.no_grad():
                self.forward(ids, *extras)
        finally:
            handle.remove()
        return captured[0].detach()

    def _intermediate_pass(self, ids: Any, base_ids: Any, extras: tuple[Any, ...], target: int,
                           n_steps: int, method: str, batch: int | None) -> tuple[Any, Any, Any]:
        import torch
        from captum.attr._utils.approximation_methods import approximation_parameters

        step_sizes_of, alphas_of = approximation_parameters(method)
        steps, alphas = step_sizes_of(n_steps), alphas_of(n_steps)
        x, x0 = self._layer_value(ids, extras), self._layer_value(base_ids, extras)
        scaled = torch.cat([x0 + alpha * (x - x0) for alpha in alphas], dim=0)
        size = batch or n_steps
        grads = [self._gradients(scaled[start:start + size], ids, extras, target)
                 for start in range(0, n_steps, size)]
        return torch.cat(grads), torch.tensor(steps, dtype=torch.float32).view(n_steps, 1), scaled

    def _gradients(self, part: Any, ids: Any, extras: tuple[Any, ...], target: int) -> Any:
        import torch

        points = part.detach().requires_grad_()
        count = points.shape[0]
        handle = self.tap.register_forward_hook(lambda _m, _i, _o: points)
        try:
            with torch.enable_grad():
                logits = self.forward(ids.expand(count, -1),
                                      *(e.expand(count, *e.shape[1:]) for e in extras))
                (grad,) = torch.autograd.grad(torch.unbind(logits[:, target]), points)
        finally:
            handle.remove()
        return grad.detach()


# --- one method in its own process ----------------------------------------------

def _max_rss_mib() -> float:
    """This process's resident-set high-water mark (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _planner(adapter: Any, dtype: str) -> Any:
    """A chunk planner exactly as a worker on this device builds it."""
    from intgrads_zmq.engine import ChunkPlanner

    return ChunkPlanner.for_device(adapter.device.type, dtype)


def _runner(method: str, adapter: Any, job: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    """A function text -> {target, ig_sum, chunk} for the chosen method."""
    from intgrads_zmq.engine import attribute
    from intgrads_zmq.options import AttributionOptions

    options = AttributionOptions(n_steps=job["n_steps"], method=job["method"],
                                 baseline=job["baseline"], max_length=job["length"],
                                 seed=job["seed"])
    if method == "ours":
        planner = _planner(adapter, job["dtype"])

        def ours(text: str) -> dict[str, Any]:
            result = attribute(adapter, text, options, planner=planner, dtype=job["dtype"])
            return {"target": result.meta["target"], "ig_sum": result.meta["attribution_sum"],
                    "chunk": result.meta["timings"]["chunk_steps"]}

        return ours

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


def recipe_batch(choice: str, planner: Any, adapter: Any, text: str, job: dict[str, Any]) -> int | None:
    """Captum's ``internal_batch_size``: our planner's chunk (fair), all steps
    at once (the original's ``None``), or a fixed number of steps."""
    if choice == "all":
        return None
    if choice == "engine":
        tokens = adapter.encode(text, job["length"]).length
        return planner.chunk_steps(adapter.size_hints(), tokens, job["n_steps"], "float32")
    return int(choice)


def run_child(job_path: str) -> None:
    """Serve one method: load the model, then time texts as the parent asks.

    Protocol (one JSON line per answer on the original stdout; everything the
    libraries print goes to stderr): a ready line after loading, then for
    each ``run I`` line on stdin the seconds and outcome for text I, and for
    ``stop`` the process's peak memory.
    """
    job = json.loads(Path(job_path).read_text())
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints must not corrupt the answers
    if job["threads"]:
        os.environ["OMP_NUM_THREADS"] = str(job["threads"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from intgrads_zmq.models.loader import load_model
    from intgrads_zmq.models.spec import ModelSpec
    from intgrads_zmq.service.tuning import tune_malloc

    tune_malloc()  # as workers do; applied to both methods alike
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    texts = job["texts"]
    device = torch.device(job["device"])
    adapter = load_model(ModelSpec.from_dict(job["model"]), device)
    run = _runner(job["run"], adapter, job)
    tokens = [adapter.encode(text, job["length"]).length for text in texts]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reply.write(json.dumps({
        "tokens": tokens, "rss_loaded_mib": _max_rss_mib(), "threads": torch.get_num_threads(),
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
            reply.write(json.dumps({"rss_peak_mib": _max_rss_mib(), "gpu_peak_mib": gpu}) + "\n")
            return


class Child:
    """One method in its own persistent interpreter (its memory is its own)."""

    def __init__(self, method: str, job: dict[str, Any], folder: Path) -> None:
        self.method = method
        job_path = folder / f"{method}-job.json"
        job_path.write_text(json.dumps({**job, "run": method}))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        command = [sys.executable, "-m", "bench.time_trial", "--child", str(job_path)]
        self.process = subprocess.Popen(command, cwd=REPO, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.info: dict[str, Any] = {}

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise click.ClickException(f"the {LABELS[self.method]} run failed (exit {code}); "
                                       "see stderr")
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def schedule(methods: list[str], examples: int, repeats: int) -> list[tuple[str, int]]:
    """Alternate the methods text by text, swapping who goes first each time,
    so that load from other processes and thermal drift hit both alike."""
    runs = []
    for turn in range(examples * repeats):
        order = methods if turn % 2 == 0 else methods[::-1]
        runs.extend((method, turn % examples) for method in order)
    return runs


def run_trial(job: dict[str, Any], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Start one child per method, warm each up, run the schedule, collect."""
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="time-trial-") as folder:
        children = {m: Child(m, job, Path(folder)) for m in methods}
        try:
            results = {m: {**child.answer(), "runs": []} for m, child in children.items()}
            runs = schedule(methods, len(job["texts"]), job["repeats"])
            warmups = [(m, 0) for m in methods] if job["warmup"] else []
            with tqdm(total=len(warmups) + len(runs), unit="run", file=sys.stderr) as bar:
                for method, index in warmups:
                    bar.set_description(f"warm-up {method}")
                    children[method].ask(f"run {index}")
                    bar.update()
                for method, index in runs:
                    bar.set_description(f"{method} text {index + 1}")
                    results[method]["runs"].append((index, children[method].ask(f"run {index}")))
                    bar.update()
            for method, child in children.items():
                results[method].update(child.ask("stop"))
        finally:
            for child in children.values():
                child.close()
    return {m: _summarise(r, len(job["texts"])) for m, r in results.items()}


def _summarise(result: dict[str, Any], examples: int) -> dict[str, Any]:
    runs = result.pop("runs")
    first = {index: outcome for index, outcome in reversed(runs)}  # first repeat of each text
    result["seconds"] = [outcome["seconds"] for _, outcome in runs]
    result["targets"] = [first[i]["target"] for i in range(examples)]
    result["ig_sums"] = [first[i]["ig_sum"] for i in range(examples)]
    result["chunks"] = sorted({outcome["chunk"] for _, outcome in runs})
    return result


# --- the report -------------------------------------------------------------------

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


# --- the command line -----------------------------------------------------------

def _batch_choice(_ctx: Any, _param: Any, value: str) -> str:
    if value in ("engine", "all") or (value.isdigit() and int(value) > 0):
        return value
    raise click.BadParameter("use 'engine', 'all' or a positive number of steps")


@click.command(context_settings={"help_option_names": ["--help"]})
@model_source_options
@click.option("--examples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Texts to explain (the original ran 1,855).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Times every text is explained per method (the original averaged 10).")
@click.option("--length", type=click.IntRange(min=2), default=512, show_default=True,
              help="Tokens per example: texts are built longer and truncated to this.")
@click.option("--n-steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--method", type=click.Choice(METHODS), default="gausslegendre", show_default=True)
@click.option("--baseline", type=click.Choice(BASELINES), default="pad", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bf16"]), default="float32", show_default=True,
              help="Our engine's precision; the original recipe always runs float32.")
@click.option("--texts", "texts_file", type=click.Path(exists=True, dir_okay=False),
              help="A file of real reviews, one per line (e.g. IMDB); default: built offline.")
@click.option("--vs-captum", is_flag=True, help="Also time the original recipe and compare.")
@click.option("--recipe-batch", default="engine", show_default=True, callback=_batch_choice,
              help="Steps per batch for the recipe: 'engine' (our planner's, fair), 'all' "
                   "(the original's single batch) or a number.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Chooses the built texts and seeds random baselines.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per method (default: torch's choice, all cores).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="Explain the first text once, untimed, before timing.")
def main(model_dir: str | None, bert_path: str | None, xlnet_base_path: str | None,
         xlnet_large_path: str | None, tokenizer: str | None, examples: int, repeats: int,
         length: int, n_steps: int, method: str, baseline: str, dtype: str, texts_file: str | None,
         vs_captum: bool, recipe_batch: str, seed: int, threads: int | None, device: str,
         warmup: bool) -> None:
    """Time integrated + intermediate gradients over long review-like texts.

    Reports seconds per example, examples per second, peak memory and tokens
    per example; with --vs-captum, also the original server's recipe (Captum
    LayerIntegratedGradients plus a separate intermediate-gradients pass) and
    the speed-up.
    """
    from intgrads_zmq.cli import model_spec

    if method == "riemann_trapezoid" and n_steps < 2:
        raise click.UsageError("riemann_trapezoid needs --n-steps 2 or more")
    spec = model_spec(model_dir, bert_path, xlnet_base_path, xlnet_large_path, tokenizer, None)
    if texts_file:
        texts, source = read_texts(texts_file, examples), f"file {texts_file}"
    else:
        texts = review_texts(examples, length=length, seed=seed)
        source = "review-like text built offline (bench/texts.py)"
    job = {"model": spec.to_dict(), "texts": texts, "length": length, "n_steps": n_steps,
           "method": method, "baseline": baseline, "dtype": dtype, "seed": seed,
           "threads": threads, "device": device, "repeats": repeats, "warmup": warmup,
           "recipe_batch": recipe_batch}
    before = os.getloadavg()[0]
    results = run_trial(job, ["ours", "recipe"] if vs_captum else ["ours"])
    after = os.getloadavg()[0]
    click.echo(report(job, results, (before, after), len(set(texts)), source))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        run_child(sys.argv[2])
    else:
        main()
