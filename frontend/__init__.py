"""The HTTP frontend: ``gunicorn frontend:app`` serves it.

Importing this module builds the Falcon app but opens no socket: ZeroMQ
connections are made per thread on first use, i.e. after gunicorn forks.
"""

from .app import create_app

app = create_app()

__all__ = ["app", "create_app"]
