"""Give ``gunicorn frontend`` our settings from any working directory.

Gunicorn reads its settings from ``-c``, from ``GUNICORN_CMD_ARGS``, or from
``./gunicorn.conf.py`` in the current directory, and its master never imports
the app, so the app cannot bring its own settings. Without them gunicorn
silently serves with sync workers and a 30 s timeout, which kills any long
attribution. The package installs a ``.pth`` start-up line (gunicorn_hook.pth,
which is cheap for every other interpreter and never fatal) that calls
:func:`apply` in processes started as ``gunicorn`` (or ``python -m gunicorn``);
when the app argument is ours and no configuration was given in any of the
three ways, it adds ``-c <frontend/gunicorn.conf.py>`` to ``sys.argv`` before
gunicorn parses it. Anything else is left exactly as it was.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).with_name("gunicorn.conf.py")
INFO_ONLY = frozenset({"-h", "--help", "-v", "--version"})
OUR_APPS = frozenset({"frontend", "frontend:app", "frontend:application"})


def started_as_gunicorn(orig_argv: Sequence[str]) -> bool:
    """``.../bin/gunicorn ...`` or ``python [opts] -m gunicorn ...``."""
    if len(orig_argv) > 1 and Path(orig_argv[1]).name == "gunicorn":
        return True
    return any(a == "-m" and b == "gunicorn" for a, b in zip(orig_argv, orig_argv[1:], strict=False))


class _ParseError(Exception):
    pass


def _parse(args: Sequence[str]) -> Any:
    """Gunicorn's own parser, so options with values are skipped correctly;
    raises _ParseError (never exits) on what gunicorn itself will refuse."""
    from gunicorn.config import Config

    parser = Config().parser()

    def refuse(message: str) -> None:
        raise _ParseError(message)

    parser.error = refuse  # type: ignore[method-assign]
    return parser.parse_args(list(args))


def config_to_add(args: Sequence[str], environ: dict[str, str], cwd: Path) -> list[str]:
    """The arguments to insert before gunicorn's own: ``["-c", path]`` or none."""
    if INFO_ONLY.intersection(args):  # gunicorn prints and exits; parsing here would print twice
        return []
    try:
        given = _parse(args)
        from_env = _parse(shlex.split(environ.get("GUNICORN_CMD_ARGS", "")))
    except (_ParseError, SystemExit, ValueError):
        return []
    if given.config or from_env.config or (cwd / "gunicorn.conf.py").exists():
        return []
    if len(given.args) != 1 or given.args[0] not in OUR_APPS:
        return []
    return ["-c", str(CONFIG)]


def apply() -> None:
    """Called from the ``.pth`` line at interpreter start-up (see module doc)."""
    try:
        if not started_as_gunicorn(getattr(sys, "orig_argv", ())):
            return
        extra = config_to_add(sys.argv[1:], dict(os.environ), Path.cwd())
        sys.argv[1:1] = extra
    except Exception as exc:  # noqa: BLE001 - a start-up hook must never stop the interpreter
        print(f"intgrads frontend: gunicorn settings hook skipped ({exc!r})", file=sys.stderr)
