"""``intgrads-batch INPUT -o FOLDER (--server URL | --model PATH)``.

Explains every example of INPUT into FOLDER; running the same command again
resumes where the last run stopped. See :mod:`intgrads_zmq.batch`.

Exit codes: 0 the folder holds a row for every example (some may be
recorded failures), 1 the run stopped on an error (server unreachable,
option refused, bad input), 2 usage, 130 interrupted (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from ..sizes import parse_bytes
from .inputs import FORMATS, InputError, detect_format, read_examples
from .journal import JournalCorrupt, recover
from .parquet import ParquetUnavailable, require_pyarrow, write_parquet
from .progress import Progress
from .report import render
from .request import AGGREGATES, OptionError, RequestSpec, build_request
from .resume import (
    MANIFEST,
    PARQUET,
    REPORT,
    ROWS,
    SUMMARY,
    OutputError,
    clear_results,
    manifest,
    open_output,
)
from .runner import Runner, RunSettings
from .stack import PrivateStack, StackError
from .summary import summarize
from .transport import HttpFailure, Transport, Unreachable

EXIT_INTERRUPTED = 130


def say(message: str) -> None:
    click.echo(f"intgrads-batch: {message}", err=True)


class _Signals:
    """Ctrl-C / SIGTERM set ``stop`` (the run cancels and writes what it has);
    a second one exits at once (the journal is whole at every moment anyway)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            os._exit(EXIT_INTERRUPTED)
        self.stop.set()
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # off the progress line
        say("stopping: cancelling the requests in flight (again to quit at once)")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def choose_model(models: dict[str, Any], wanted: str | None) -> dict[str, Any]:
    """The ``GET /models`` entry of the model the run uses (the default one if not named)."""
    name = wanted or models.get("default_model")
    served = {m.get("name"): m for m in models.get("models", [])}
    if name is None and len(served) == 1:
        name = next(iter(served))
    if name not in served:
        raise click.ClickException(f"the server serves no model {name!r} (served: {', '.join(map(str, served)) or 'none'})"
                                   if name else "the server names no default model; pass --model NAME")
    return served[name]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: rows.jsonl, run.json, summary.json, report.html (and tensors/).")
@click.option("--server", metavar="URL", help="A running server, e.g. http://127.0.0.1:8888.")
@click.option("--model", metavar="NAME|PATH",
              help="With --server: the model's name there (default: the server's default model). Without "
                   "--server: a Hugging Face classifier directory (or 'demo') served privately for this run.")
@click.option("--input-format", type=click.Choice(FORMATS), help="Default: from the extension.")
@click.option("--text-field", default="text", show_default=True, help="JSONL key / CSV column of the text.")
@click.option("--label-field", help="JSONL key / CSV column of the gold label (for accuracy).")
@click.option("--id-field", help="JSONL key / CSV column of the id. Default: the line (CSV: row) number.")
@click.option("--target", help="Class to explain: an index, a label, or 'all'. Default: the predicted one.")
@click.option("--contrast", help="Explain logit[target] - logit[contrast] (an index or a label).")
@click.option("--aggregate", type=click.Choice(AGGREGATES), help="'words' adds word-level attributions.")
@click.option("--metrics", help="Faithfulness metrics, comma-separated: comprehensiveness,sufficiency,log_odds.")
@click.option("--n-steps", help="Path steps (an integer) or 'auto'. Default: the server's.")
@click.option("--tolerance", type=float, help="Relative error target for --n-steps auto.")
@click.option("--baseline", help="zero, pad, unk, period, rand-norm, rand-unif, mask (the server checks).")
@click.option("--method", help="Integration rule, e.g. gausslegendre, riemann_trapezoid.")
@click.option("--max-length", type=click.IntRange(min=2), help="Tokens kept per text.")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of the random baselines.")
@click.option("--fields", help="Full tensors to keep, comma-separated (integrated_gradients, "
                               "intermediate_gradients, step_sizes, intermediates): safetensors shards.")
@click.option("--output-format", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True,
              help="parquet also writes rows.parquet at the end (needs pyarrow).")
@click.option("--concurrency", type=click.IntRange(min=1),
              help="Requests in flight. Default: the model's worker count on the server.")
@click.option("--retries", type=click.IntRange(min=0), default=20, show_default=True,
              help="Tries of a 503 / unanswered request before the run stops.")
@click.option("--timeout", type=click.FloatRange(min=1), default=660.0, show_default=True,
              help="Seconds to wait for one answer.")
@click.option("--retry-failed", is_flag=True, help="Run the examples recorded as failed again.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N examples of INPUT.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Private stack (--model PATH): workers to start.")
@click.option("--cuda/--cpu", "cuda", default=None, help="Private stack: GPUs or CPU (default: GPUs if any).")
@click.option("--stack-arg", multiple=True, metavar="ARG",
              help="Private stack: one more argument for `intgrads-broker start` (repeatable), "
                   "e.g. --stack-arg=--max-steps --stack-arg=1000.")
@click.option("--start-timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Private stack: seconds to wait for its first worker.")
@click.option("--shard-size", default="256MiB", show_default=True, help="Tensor bytes per safetensors shard.")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Report: tokens listed per class.")
@click.option("--min-count", type=click.IntRange(min=1), default=2, show_default=True,
              help="Report: occurrences a token needs to be ranked.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="The progress line on stderr.")
def main(input_path: Path, output: Path, server: str | None, model: str | None, **kw: Any) -> None:
    """Explain every example of INPUT (JSONL, CSV/TSV, or one text per line) into the folder
    --output. Running the same command again resumes: examples already written are skipped."""
    try:
        spec = build_request(target=kw["target"], contrast=kw["contrast"], aggregate=kw["aggregate"],
                             metrics=kw["metrics"], n_steps=kw["n_steps"], tolerance=kw["tolerance"],
                             baseline=kw["baseline"], method=kw["method"], max_length=kw["max_length"],
                             seed=kw["seed"], fields=kw["fields"], model=model if server else None)
        shard_bytes = parse_bytes(kw["shard_size"])
    except (OptionError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if not server and not model:
        raise click.UsageError("give --server URL (a running server) or --model PATH (served privately)")
    if not server and model != "demo" and not Path(model).is_dir():
        raise click.UsageError(f"--model {model!r}: without --server it must be a model directory (or 'demo')")
    try:
        if kw["output_format"] == "parquet":
            require_pyarrow()
        examples = read_examples(input_path, fmt=kw["input_format"], text_field=kw["text_field"],
                                 label_field=kw["label_field"], id_field=kw["id_field"])
    except (InputError, ParquetUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    if kw["limit"]:
        examples = examples[: kw["limit"]]
    stop = threading.Event()
    with _Signals(stop):
        code = _run(input_path, output, server, model, spec, examples, shard_bytes, stop, kw)
    sys.exit(code)


def _run(input_path: Path, output: Path, server: str | None, model: str | None, spec: RequestSpec,
         examples: list, shard_bytes: int, stop: threading.Event, kw: dict[str, Any]) -> int:
    stack = None
    try:
        if server is None:
            stack = PrivateStack(str(Path(model).resolve()) if model != "demo" else "demo",
                                 workers=kw["workers"], cuda=kw["cuda"], extra_args=list(kw["stack_arg"]))
            say(f"starting a private server for {model} ({kw['workers']} worker(s))")
            server = stack.start(stop, kw["start_timeout"])
        transport = Transport(server, timeout=kw["timeout"])
        entry = choose_model(transport.get_json("/models"), spec.model)
        spec = RequestSpec(options=spec.options, fields=spec.fields, model=entry["name"])
        concurrency = kw["concurrency"] or max(1, int(entry.get("workers") or 0))
        return _execute(input_path, output, transport, spec, examples, concurrency, shard_bytes, stop, kw)
    except StackError as exc:
        if stop.is_set():
            say("interrupted while the private server started")
            return EXIT_INTERRUPTED
        say(str(exc))
        return 1
    except (HttpFailure, Unreachable) as exc:
        say(f"cannot use the server at {server}: {exc}")
        return 1
    except (OutputError, JournalCorrupt, ParquetUnavailable, click.ClickException) as exc:
        say(exc.format_message() if isinstance(exc, click.ClickException) else str(exc))
        return 1
    finally:
        if stack is not None:
            say("stopping the private server")
            stack.stop()


def _execute(input_path: Path, output: Path, transport: Transport, spec: RequestSpec, examples: list,
             concurrency: int, shard_bytes: int, stop: threading.Event, kw: dict[str, Any]) -> int:
    run = manifest(input_path=input_path, input_format=detect_format(input_path, kw["input_format"]),
                   text_field=kw["text_field"], label_field=kw["label_field"], id_field=kw["id_field"],
                   request=spec.to_dict(), output_format=kw["output_format"])
    state = open_output(output, run, retry_failed=kw["retry_failed"])
    try:
        if state.dropped_bytes:
            say(f"dropped a torn last line ({state.dropped_bytes} bytes) left by an interrupted run")
        if state.removed_files:
            say(f"removed {len(state.removed_files)} unfinished tensor file(s): {', '.join(state.removed_files)}")
        if state.retried:
            say(f"running {state.retried} failed example(s) again (--retry-failed)")
        done = state.done
        todo = [e for e in examples if e.key not in done]
        say(f"{len(examples)} examples in {input_path}; {len(examples) - len(todo)} already in {output}, "
            f"{len(todo)} to do; model {spec.model}, concurrency {concurrency}")
        if todo:
            clear_results(output)
            progress = Progress(len(examples), len(examples) - len(todo), sys.stderr, enabled=kw["progress"])
            settings = RunSettings(concurrency=concurrency, retries=kw["retries"], shard_bytes=shard_bytes)
            result = Runner(transport, spec, todo, output, state.rows, settings, progress, stop).run()
            if result.error:
                say(f"stopped: {result.error}. {result.written} rows written in this run; run the same "
                    "command again to continue")
                return 1
            if result.interrupted:
                say(f"interrupted: {result.written} rows written in this run, {result.discarded} request(s) "
                    f"cancelled; {len(done) + result.written} of {len(examples)} in {output}. Run the same "
                    "command again to resume")
                return EXIT_INTERRUPTED
        finish(output, run, kw)
        return 0
    finally:
        state.release()


def finish(output: Path, run: dict[str, Any], kw: dict[str, Any]) -> dict[str, Any]:
    """summary.json, report.html (and rows.parquet) from the complete journal."""
    rows = recover(output / ROWS).rows
    summary = summarize(rows, top_k=kw["top_k"], min_count=kw["min_count"])
    stored = json.loads((output / MANIFEST).read_text(encoding="utf-8"))
    _atomic_text(output / SUMMARY, json.dumps(summary, indent=1, ensure_ascii=False, allow_nan=False))
    _atomic_text(output / REPORT, render(summary, rows, {**run, **stored}))
    written = [SUMMARY, REPORT]
    if kw["output_format"] == "parquet":
        as_json = write_parquet(rows, output / PARQUET)
        written.append(PARQUET + (f" (as JSON text: {', '.join(as_json)})" if as_json else ""))
    accuracy = summary.get("accuracy")
    extra = f", accuracy {accuracy['accuracy']:.1%} on {accuracy['labelled']} labelled" if accuracy else ""
    say(f"done: {summary['examples']} rows ({summary['ok']} explained, {summary['failed']} failed{extra}); "
        f"wrote {', '.join(written)} in {output}")
    return summary


def _atomic_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


if __name__ == "__main__":
    main()
