"""Gunicorn settings for ``gunicorn frontend`` / ``gunicorn frontend:app``.

Applied from any directory: the installed start-up hook (gunicorn_hook.py)
passes ``-c`` with this file when no configuration is given; from the repo
root ./gunicorn.conf.py (a link here) is found too; ``-c`` also works.

Threads, not a timeout, keep long requests alive: with the gthread worker the
arbiter's timeout only watches the worker's main loop, which keeps beating
while a handler thread waits minutes for a 512-token CPU computation. The
request deadline itself is INTGRADS_TIMEOUT (seconds); the broker endpoint is
INTGRADS_BROKER (default: this user's private ipc:// socket, where a plain
``intgrads-broker start`` listens), with INTGRADS_SERVER_KEY / INTGRADS_CLIENT_KEY
naming the key pair for a broker whose frontend port uses CURVE (checked when
the app loads: a worker that cannot reach the broker safely fails to boot).
ZeroMQ sockets are opened lazily per thread, after fork.
"""

import os

from intgrads_zmq.service.tuning import map_large_blocks

# Reply buffers are mapped and unmapped per reply (see map_large_blocks); set in
# the master when this file loads, inherited by the forked workers.
map_large_blocks()

bind = os.environ.get("INTGRADS_BIND", "127.0.0.1:8888")
worker_class = "gthread"
workers = int(os.environ.get("INTGRADS_HTTP_WORKERS", "1"))
threads = int(os.environ.get("INTGRADS_HTTP_THREADS", "32"))
timeout = 120  # heartbeat of the worker's main loop, not a request limit
graceful_timeout = int(float(os.environ.get("INTGRADS_TIMEOUT", "600"))) + 10
keepalive = 5
limit_request_line = 8190
accesslog = os.environ.get("INTGRADS_ACCESS_LOG", "-") or None
loglevel = os.environ.get("INTGRADS_LOG_LEVEL", "info")
# No runtime control socket: several instances (tests, replicas) would fight
# over its single default path, and nothing here needs it.
control_socket_disable = True


def post_worker_init(worker):
    """Make the worker's quit handler run once.

    Ctrl-C reaches every process of the group (SIGINT), and the arbiter then
    sends its own quit signal: in gunicorn's gthread worker the second call of
    ``handle_quit`` re-enters ``ThreadPoolExecutor.shutdown`` while the first
    holds its lock, and the worker hangs for ever (seen: an orphaned worker
    after ``make serve`` was interrupted). A quit already under way needs no
    second one.
    """
    import signal

    quit_once = _once(worker.handle_quit)
    for sig in (signal.SIGQUIT, signal.SIGINT):
        signal.signal(sig, quit_once)


def _once(handler):
    started = []

    def call(sig, frame):
        if not started:
            started.append(sig)
            handler(sig, frame)

    return call
