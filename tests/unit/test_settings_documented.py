"""Every environment variable the code reads is in README's settings table.

An undocumented INTGRADS_* variable is a setting nobody can find; this test
greps the package sources for the names, so adding one without a README row
fails here.
"""

from __future__ import annotations

import re

from intgrads_zmq.testing.stack import REPO

NAME = re.compile(r"\bINTGRADS_[A-Z0-9_]*[A-Z0-9]\b")
SOURCES = ("frontend", "intgrads_zmq")


def _names_in_code() -> dict[str, str]:
    found: dict[str, str] = {}
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            for name in NAME.findall(path.read_text(encoding="utf-8")):
                found.setdefault(name, str(path.relative_to(REPO)))
    return found


def _names_in_readme_tables() -> set[str]:
    rows = [line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
            if line.lstrip().startswith("|")]
    return {name for row in rows for name in NAME.findall(row)}


def test_the_code_reads_settings_at_all():
    assert {"INTGRADS_BROKER", "INTGRADS_TIMEOUT", "INTGRADS_BIND"} <= set(_names_in_code())


def test_every_setting_the_code_reads_has_a_readme_table_row():
    missing = {name: where for name, where in _names_in_code().items() if name not in _names_in_readme_tables()}
    assert not missing, f"add these to README's settings table (name, default, meaning): {missing}"
