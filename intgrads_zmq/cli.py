"""Command line: ``intgrads-broker start | worker | status | drain | keys`` and ``intgrads``.

``start`` runs the broker and supervises local workers; ``worker`` joins a
broker (possibly on another host) with workers of its own; ``status`` asks a
broker what it serves; ``drain`` retires workers without dropping requests; ``keys`` makes CURVE key pairs. ``intgrads`` keeps the
original server's habits: one command that also starts the HTTP frontend.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .models.spec import DEMO_NAME, ModelSpec
from .options import BASELINES, METHODS
from .service.devices import PlanError
from .service.endpoints import BROKER_ENV, default_client_endpoint, default_worker_endpoint
from .service.settings import ServeSettings
from .sizes import parse_bytes

log = logging.getLogger("intgrads")


class StepsParam(click.ParamType):
    """A positive step count, or 'auto' for adaptive integration."""

    name = "INTEGER|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool):
            steps = value
        elif str(value).strip().lower() == "auto":
            return "auto"
        else:
            try:
                steps = int(str(value))
            except ValueError:
                self.fail(f"{value!r} is neither a step count nor 'auto'", param, ctx)
        if steps < 1:
            self.fail(f"{steps} is not a positive step count", param, ctx)
        return steps


def _apply(func: Callable[..., Any], decorators: list[Callable[..., Any]]) -> Callable[..., Any]:
    return functools.reduce(lambda f, d: d(f), reversed(decorators), func)


def model_source_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Which model to load (no flag: the embedded demo model); shared with bench/."""
    return _apply(func, [
        click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
                     help="A Hugging Face sequence-classifier directory (config, weights, tokenizer)."),
        click.option("-bp", "--bert-path", type=click.Path(exists=True, dir_okay=False),
                     help="The original server's fine-tuned BERT state dict (.pth)."),
        click.option("-xlb", "--xlnet-base-path", type=click.Path(exists=True, dir_okay=False),
                     help="The original server's fine-tuned XLNet-base state dict."),
        click.option("-xll", "--xlnet-large-path", type=click.Path(exists=True, dir_okay=False),
                     help="The original server's fine-tuned XLNet-large state dict."),
        click.option("--tokenizer", type=click.Path(exists=True, file_okay=False),
                     help="Tokenizer directory for -bp/-xlb/-xll (vocab.txt, spiece.model or tokenizer.json)."),
    ])


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The model-selection and serving flags shared by every serving command."""
    decorators = [
        model_source_options,
        click.option("--name", default=None,
                     help="Name requests use for this model (POST /model/NAME/). Default: 'demo', or "
                          "the directory / file stem."),
        click.option("--cuda/--cpu", "cuda", default=None,
                     help="Run on GPUs or on the CPU. Default: GPUs when any is visible."),
        click.option("--num-cuda-devs", type=click.IntRange(min=1), default=1, show_default=True,
                     help="GPUs per worker. G visible GPUs give G // N workers; N > 1 splits the model "
                          "across its group with an accelerate device map."),
        click.option("--workers", type=click.IntRange(min=0), default=None,
                     help="CPU workers to start (cores are divided between them); with --cuda, at most "
                          "this many GPU groups. Default: 1 on CPU, every group on GPUs. 0: broker only."),
        click.option("--baseline", type=click.Choice(BASELINES), default="pad", show_default=True,
                     help="Default baseline; a request may choose another."),
        click.option("--method", type=click.Choice(METHODS), default="gausslegendre", show_default=True,
                     help="Default integration rule."),
        click.option("--n-steps", type=StepsParam(), default="50", show_default=True,
                     help="Default number of path steps, or 'auto' (adaptive, to a tolerance)."),
        click.option("--max-steps", type=click.IntRange(min=1), default=300, show_default=True,
                     help="Largest n_steps a request may ask for."),
        click.option("--max-target-classes", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Most classes target \"all\" explains in one request (one backward each)."),
        click.option("--max-length", type=click.IntRange(min=2), default=512, show_default=True,
                     help="Tokens kept per text (longer texts are truncated, as the original did)."),
        click.option("--dtype", type=click.Choice(["float32", "bf16"]), default="float32", show_default=True,
                     help="bf16 autocast is 2-4x faster on CPUs with AMX and on GPUs; float32 is exact."),
        click.option("--memory-budget", default=None,
                     help="Memory for one chunk of path steps, e.g. 2GiB (default: 2GiB on CPU, 60% of "
                          "free GPU memory). Long inputs run in more, smaller chunks."),
    ]
    return _apply(func, decorators)


def model_spec(model_dir: str | None, bert_path: str | None, xlnet_base_path: str | None,
               xlnet_large_path: str | None, tokenizer: str | None, name: str | None) -> ModelSpec:
    chosen = [(k, v) for k, v in (("hf", model_dir), ("bert", bert_path), ("xlnet-base", xlnet_base_path),
                                  ("xlnet-large", xlnet_large_path)) if v]
    if len(chosen) > 1:
        raise click.UsageError("give one model: --model, -bp, -xlb or -xll")
    if not chosen:
        return ModelSpec(name=name or DEMO_NAME)
    kind, path = chosen[0]
    return ModelSpec(kind=kind, path=str(path), tokenizer=tokenizer, name=name or Path(path).stem)


def serve_settings(settings: dict[str, Any]) -> ServeSettings:
    """The typed settings the serving flags describe (model flags already removed)."""
    budget = settings.pop("memory_budget")
    try:
        parsed = ServeSettings(memory_budget=parse_bytes(budget) if budget else None, **settings)
        parsed.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    return parsed


MODEL_KEYS = ("model_dir", "bert_path", "xlnet_base_path", "xlnet_large_path", "tokenizer", "name")


@click.group()
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def main(log_level: str) -> None:
    """intgrads-zmq: Integrated Gradients for transformer classifiers over ZeroMQ."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(message)s")


PRIVATE_FRONTEND = "ipc://<private dir>/frontend"
PRIVATE_BACKEND = "ipc://<private dir>/backend"
PRIVATE_HELP = ("<private dir>: $XDG_RUNTIME_DIR/intgrads, or /tmp/intgrads-<uid>; mode 0700, made on first use "
                "and refused when other users may enter it.")


def client_key_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--server-key / --client-key for commands that talk to the broker's frontend port."""
    return _apply(func, [
        click.option("--server-key", type=click.Path(exists=True, dir_okay=False), envvar="INTGRADS_SERVER_KEY",
                     default=None, help="The broker's public key (broker.key) when its frontend port uses "
                                        "CURVE. Env: INTGRADS_SERVER_KEY."),
        click.option("--client-key", type=click.Path(exists=True, dir_okay=False), envvar="INTGRADS_CLIENT_KEY",
                     default=None, help="A frontend secret key (frontendN.key_secret; on the broker's host "
                                        "broker.key_secret works too). Env: INTGRADS_CLIENT_KEY."),
    ])


def client_curve(server_key: str | None, client_key: str | None) -> Any:
    """The CurveClient those two options describe, or None."""
    from .service.security import CurveClient

    if bool(server_key) != bool(client_key):
        raise click.UsageError("--server-key and --client-key go together")
    return CurveClient(Path(client_key), Path(server_key)) if server_key and client_key else None


def check_worker_link(connect: str, curve: Any) -> None:
    """A worker without keys where the broker demands them would be refused at
    every handshake and retry for ever: say so now instead. Beyond loopback a
    broker always demands them; on loopback TCP when INTGRADS_REQUIRE_CURVE=1."""
    import os

    from .service.security import REQUIRE_CURVE_ENV, curve_needed, env_flag

    required = env_flag(os.environ, REQUIRE_CURVE_ENV)
    if curve is None and curve_needed(connect, everywhere=required):
        why = "leaves this host" if curve_needed(connect) else f"is TCP and {REQUIRE_CURVE_ENV} is set"
        raise click.UsageError(f"--connect {connect} {why}: the broker accepts only workers with an authorised "
                               "CURVE key there; give --server-key broker.key --client-key workerN.key_secret")


@main.command()
@model_options
@click.option("--frontend", default=default_client_endpoint, show_default=PRIVATE_FRONTEND,
              help="Where HTTP frontends (gunicorn) connect; gunicorn finds the default by itself. "
                   "A non-loopback address needs --keys (frontends then present a frontend key). " + PRIVATE_HELP)
@click.option("--backend", default=default_worker_endpoint, show_default=PRIVATE_BACKEND,
              help="Where workers connect. A non-loopback address needs --keys.")
@click.option("--queue-bound", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests waiting per model before new ones are answered 'overloaded' (HTTP 503).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=600.0, show_default=True,
              help="Deadline for a request that names none, in seconds.")
@click.option("--heartbeat", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Heartbeat interval in seconds; a worker silent for 3 intervals is dropped.")
@click.option("--keys", type=click.Path(file_okay=False), default=None,
              help="CURVE keys folder (from 'intgrads-broker keys'): remote workers must present an "
                   "authorised key.")
@click.option("--job-ttl", type=click.FloatRange(min=0.0), default=3600.0, show_default=True,
              help="Seconds a finished job's result is kept (POST /jobs/); later reads get 410 Gone.")
@click.option("--job-store-bytes", default="1GiB", show_default=True,
              help="Bound on all kept job results, e.g. 512MiB; past it the oldest are evicted (410 Gone).")
@click.option("--curve-on-loopback", is_flag=True, envvar="INTGRADS_REQUIRE_CURVE",
              help="Frontends and workers on loopback TCP must present an authorised CURVE key too "
                   "(needs --keys). Env: INTGRADS_REQUIRE_CURVE=1.")
def start(frontend: str, backend: str, queue_bound: int, timeout: float, heartbeat: float,
          keys: str | None, job_ttl: float, job_store_bytes: str, curve_on_loopback: bool,
          **settings: Any) -> None:
    """Run the broker and supervise local model workers."""
    from .service.assembly import run_broker

    spec = model_spec(*(settings.pop(k) for k in MODEL_KEYS))
    serving = serve_settings(settings)
    try:
        store_bytes = parse_bytes(job_store_bytes)
    except ValueError as exc:
        raise click.UsageError(f"--job-store-bytes: {exc}") from exc
    try:
        code = run_broker(spec, serving, frontend=frontend, backend=backend, queue_bound=queue_bound,
                          timeout=timeout, heartbeat=heartbeat, keys=keys, job_ttl=job_ttl,
                          job_store_bytes=store_bytes, curve_on_loopback=curve_on_loopback)
    except (PlanError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


@main.command()
@click.option("--connect", default=default_worker_endpoint, show_default=PRIVATE_BACKEND,
              help="The broker's backend endpoint, e.g. tcp://gpu-box:5556; the default is the one "
                   "'intgrads-broker start' binds on this host for this user.")
@model_options
@click.option("--server-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The broker's public key file (broker.key) when the broker uses CURVE.")
@click.option("--client-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="This worker's secret key file (workerN.key_secret).")
@click.option("--heartbeat", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Heartbeat interval in seconds (match the broker's).")
def worker(connect: str, server_key: str | None, client_key: str | None, heartbeat: float,
           **settings: Any) -> None:
    """Join a broker (on this or another host) with supervised workers."""
    from .service.assembly import plan_workers, run_workers

    curve = client_curve(server_key, client_key)
    check_worker_link(connect, curve)
    spec = model_spec(*(settings.pop(k) for k in MODEL_KEYS))
    serving = serve_settings(settings)
    try:
        configs = plan_workers(connect, spec, serving, curve)
    except PlanError as exc:
        raise click.ClickException(str(exc)) from exc
    for config in configs:
        config.heartbeat_interval = heartbeat
    sys.exit(run_workers(configs))


FRONTEND_OPTION_HELP = f"The broker's frontend endpoint (env: {BROKER_ENV})."


@main.command()
@click.option("--frontend", default=default_client_endpoint, envvar=BROKER_ENV, show_default=PRIVATE_FRONTEND,
              help=FRONTEND_OPTION_HELP)
@client_key_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--timeout", type=float, default=3.0, show_default=True)
def status(frontend: str, server_key: str | None, client_key: str | None, as_json: bool, timeout: float) -> None:
    """Show the models, workers and queues of a running broker."""
    from .errors import IntgradsError
    from .service.broker_client import BrokerClient

    curve = client_curve(server_key, client_key)
    try:
        with BrokerClient(frontend, curve=curve) as client:
            data = client.status(timeout=timeout)
    except IntgradsError as exc:
        raise click.ClickException(exc.description) from exc
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"default model: {data.get('default_model')}")
    for name, model in data.get("models", {}).items():
        draining = f", {model['draining']} draining" if model.get("draining") else ""
        click.echo(f"model {name}: {model['workers']} workers ({model['idle']} idle{draining}), "
                   f"{model['queued']} queued, "
                   f"labels {', '.join(model.get('labels', []))}")
        if model.get("load_error"):
            click.echo(f"  not loaded: {model['load_error']}")
    for w in data.get("workers", []):
        click.echo(f"  {w['identity']}: {w['state']} on {w.get('placement')} at {w.get('host')} "
                   f"(pid {w.get('pid')}), served {w['served']}")


@main.command()
@click.argument("model", required=False)
@click.option("--worker", "worker_id", help="Drain one worker: its identity as `intgrads-broker status` shows it.")
@click.option("--frontend", default=default_client_endpoint, envvar=BROKER_ENV, show_default=PRIVATE_FRONTEND,
              help=FRONTEND_OPTION_HELP)
@client_key_options
@click.option("--timeout", type=float, default=3.0, show_default=True)
def drain(model: str | None, worker_id: str | None, frontend: str, server_key: str | None,
          client_key: str | None, timeout: float) -> None:
    """Drain every worker of MODEL, or one (--worker ID): each finishes its
    current request, takes no new one and exits; queued requests go to the
    other workers. Supervisors do not restart drained workers."""
    from .errors import IntgradsError
    from .service.broker_client import BrokerClient

    if (model is None) == (worker_id is None):
        raise click.UsageError("name a MODEL or give --worker ID (not both)")
    curve = client_curve(server_key, client_key)
    try:
        with BrokerClient(frontend, curve=curve) as client:
            answer = client.drain(model=model, worker=worker_id, timeout=timeout)
    except IntgradsError as exc:
        raise click.ClickException(f"{exc.description} ({exc.status} {exc.code})") from exc
    workers = answer["workers"]
    click.echo(f"told {answer['count']} worker{'s' if answer['count'] != 1 else ''} to drain"
               + (f": {', '.join(workers)}" if workers else ""))


@main.command()
@click.option("--dir", "folder", required=True, type=click.Path(file_okay=False),
              help="Folder for the keys; the broker's and authorised workers' public keys go here.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Worker key pairs to make (each remote host gets one secret key).")
@click.option("--frontends", type=click.IntRange(min=0), default=1, show_default=True,
              help="Frontend key pairs to make, for gunicorn reaching the broker over CURVE.")
def keys(folder: str, workers: int, frontends: int) -> None:
    """Make CURVE key pairs for the broker, remote workers and frontends."""
    from .service.security import make_keys

    for path in make_keys(folder, workers, frontends):
        click.echo(str(path))
    click.echo(f"start the broker with --keys {folder}; give each worker broker.key and its "
               "workerN.key_secret (--server-key / --client-key), and each frontend broker.key and its "
               "frontendN.key_secret (INTGRADS_SERVER_KEY / INTGRADS_CLIENT_KEY)")


@click.command(context_settings={"help_option_names": ["--help"]})
@model_options
@click.option("-h", "--host", default="127.0.0.1", show_default=True, help="HTTP host to bind.")
@click.option("-p", "--port", type=int, default=8888, show_default=True, help="HTTP port to bind.")
@click.option("--http-workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Gunicorn worker processes (each serves many requests on threads).")
def intgrads(host: str, port: int, http_workers: int, **settings: Any) -> None:
    """The original server's command: load the model and serve POST /model/ on HOST:PORT.

    Starts the broker, the model workers and gunicorn together; Ctrl-C stops all.
    """
    from .service.assembly import run_all_in_one
    from .service.exposure import public_bind_warning

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    warning = public_bind_warning(host)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    spec = model_spec(*(settings.pop(k) for k in MODEL_KEYS))
    serving = serve_settings(settings)
    try:
        code = run_all_in_one(spec, serving, host=host, port=port, http_workers=http_workers)
    except (PlanError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


if __name__ == "__main__":
    main()
