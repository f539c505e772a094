"""``rows.parquet``: the journal's rows as a Parquet table (``--output-format parquet``).

The journal (rows.jsonl) stays the record that resuming reads: Parquet files
cannot be appended to a row at a time, so the table is written from the
journal when a run completes (temporary file, then rename). Columns are
inferred by pyarrow; a column whose values do not share one type (ids that
are sometimes numbers and sometimes strings, per-class lists next to plain
ones) is stored as JSON text and named in the schema metadata
(``intgrads_json_columns``). pyarrow is optional: ``pip install
intgrads-zmq[parquet]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class ParquetUnavailable(RuntimeError):
    """pyarrow is not installed."""


def require_pyarrow() -> None:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ParquetUnavailable("--output-format parquet needs pyarrow: pip install 'intgrads-zmq[parquet]' "
                                 "(or pip install pyarrow)") from None


def write_parquet(rows: list[dict[str, Any]], path: Path) -> list[str]:
    """Write ``rows`` to ``path`` atomically; returns the columns stored as JSON text."""
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    arrays, as_json = [], []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            arrays.append(pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values],
                                   type=pa.string()))
            as_json.append(name)
    table = pa.Table.from_arrays(arrays, names=list(names))
    table = table.replace_schema_metadata({"intgrads_json_columns": json.dumps(as_json)})
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
    return as_json
