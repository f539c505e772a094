"""Time trial: our one-pass engine against the original server's recipe.

The original server shipped a time trial over 1,855 IMDB reviews of 512
tokens, each explained by Captum's ``LayerIntegratedGradients`` *and* by the
``intermediate-gradients`` package (a second full pass over the path for the
per-step gradients, step sizes and intermediates). This script times the same
work both ways on the same inputs, model and target:

* ``intgrads-zmq (one pass, 4 outputs)``: :func:`intgrads_zmq.engine.attribute`
  with a chunk planner set up as a worker sets it up;
* ``original recipe``: :class:`intgrads_zmq.testing.reference.OriginalRecipe`,
  Captum LIG plus a second intermediate-gradients pass, in float32, as the
  original ran.

Pieces: :mod:`bench.trial_child` times one method in its own process,
:mod:`bench.trial_harness` runs the children alternately, and
:mod:`bench.trial_report` prints the table (stdout; progress goes to stderr).
Run from the repository root:

    python -m bench.time_trial --examples 4 --length 512 --vs-captum
"""

from __future__ import annotations

import os
from typing import Any

import click

from bench.trial_harness import ChildFailed, run_trial
from bench.trial_report import report
from intgrads_zmq.cli import model_source_options
from intgrads_zmq.options import BASELINES, METHODS
from intgrads_zmq.service.devices import cpu_has_native_bf16
from intgrads_zmq.testing.texts import read_texts, review_texts


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
    if dtype == "bf16" and device == "cpu" and not cpu_has_native_bf16():
        raise click.ClickException(
            "--dtype bf16 not timed: this CPU has no native bf16 (AVX-512-BF16 or AMX), and "
            "emulated bf16 runs many times slower than float32, so the figure would say nothing "
            "about the engine. Use --dtype float32, or --device cuda on a GPU."
        )
    spec = model_spec(model_dir, bert_path, xlnet_base_path, xlnet_large_path, tokenizer, None)
    if texts_file:
        texts, source = read_texts(texts_file, examples), f"file {texts_file}"
    else:
        texts = review_texts(examples, length=length, seed=seed)
        source = "review-like text built offline (intgrads_zmq/testing/texts.py)"
    job = {"model": spec.to_dict(), "texts": texts, "length": length, "n_steps": n_steps,
           "method": method, "baseline": baseline, "dtype": dtype, "seed": seed,
           "threads": threads, "device": device, "repeats": repeats, "warmup": warmup,
           "recipe_batch": recipe_batch}
    before = os.getloadavg()[0]
    try:
        results = run_trial(job, ["ours", "recipe"] if vs_captum else ["ours"])
    except ChildFailed as exc:
        raise click.ClickException(str(exc)) from None
    after = os.getloadavg()[0]
    click.echo(report(job, results, (before, after), len(set(texts)), source))


if __name__ == "__main__":
    main()
