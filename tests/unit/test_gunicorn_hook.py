"""When the start-up hook gives gunicorn our settings, and when it stays out.

The real launches are in tests/stack/test_gunicorn_launch.py; these check
each decision of frontend/gunicorn_hook.py directly, in microseconds.
"""

from __future__ import annotations

import pytest

from frontend.gunicorn_hook import CONFIG, config_to_add, started_as_gunicorn


@pytest.mark.parametrize(("argv", "expected"), [
    (["/venv/bin/python", "/venv/bin/gunicorn", "frontend"], True),
    (["python", "-m", "gunicorn", "frontend"], True),
    (["python", "-u", "-m", "gunicorn", "frontend"], True),
    (["python", "-m", "pytest", "tests/stack/test_gunicorn_launch.py"], False),
    (["python", "-c", "import gunicorn"], False),
    (["python"], False),
])
def test_which_processes_are_gunicorn(argv, expected):
    assert started_as_gunicorn(argv) is expected


@pytest.mark.parametrize("args", [["frontend"], ["frontend:app"], ["frontend:application"],
                                  ["-b", "127.0.0.1:9000", "--workers", "2", "frontend"]])
def test_our_app_without_a_configuration_gets_ours(args, tmp_path):
    assert config_to_add(args, {}, tmp_path) == ["-c", str(CONFIG)]
    assert CONFIG.is_file()


@pytest.mark.parametrize(("args", "environ", "cwd_config"), [
    (["-c", "mine.py", "frontend"], {}, False),
    (["--config=mine.py", "frontend:app"], {}, False),
    (["frontend"], {"GUNICORN_CMD_ARGS": "--config mine.py"}, False),
    (["frontend"], {}, True),  # ./gunicorn.conf.py is the user's choice
    (["myproject.wsgi:app"], {}, False),
    (["frontend", "other:app"], {}, False),
    (["--no-such-option", "frontend"], {}, False),  # gunicorn reports that itself
    (["--version"], {}, False),
    (["-h"], {}, False),
])
def test_anything_else_is_left_alone(args, environ, cwd_config, tmp_path):
    if cwd_config:
        (tmp_path / "gunicorn.conf.py").write_text("workers = 1\n")
    assert config_to_add(args, environ, tmp_path) == []
