"""The HTTP frontend: ``gunicorn frontend`` (or ``gunicorn frontend:app``) serves it.

The app is built on first access to ``frontend.app`` / ``frontend.application``
(the name gunicorn looks up when none is given), not on import: the gunicorn
start-up hook and the all-in-one launcher import this package in processes
that never serve HTTP. Building it opens no socket either: ZeroMQ connections
are made per thread on first use, i.e. after gunicorn forks.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["app", "application", "create_app"]

_APP_NAMES = ("app", "application")
_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .falcon_app import create_app

        return create_app
    if name not in _APP_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if "app" not in globals():
            from .falcon_app import create_app

            globals()["app"] = globals()["application"] = create_app()
    return globals()["app"]
