"""Full tensors (``--fields``) as safetensors shards with an index.

Rows stay small; the tensors of many examples go into one shard file,
``tensors/shard-00001.safetensors``, named ``"<id>/<field>"`` inside it.
``tensors/index.json`` maps every tensor name to its shard (the layout
Hugging Face uses for sharded weights) and each row also names its shard.

Order of writes, so that every row on disk has its tensors on disk: the
shard is written to a temporary file, fsynced and renamed; only then are its
rows appended to the journal; the index comes last and is rebuilt from the
journal whenever it is in doubt. A shard without rows (a crash between the
rename and the append) is an orphan, removed when the run resumes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..encoding.safetensors_format import write_safetensors
from ..payload import RawTensor
from .journal import fsync_dir

SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.safetensors$")
INDEX_NAME = "index.json"


def tensor_name(example_id: Any, field: str) -> str:
    return f"{example_id}/{field}"


class ShardWriter:
    """Collects the tensors of finished examples and writes them a shard at a time."""

    def __init__(self, folder: Path, refs: dict[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.refs: dict[str, str] = dict(refs or {})  # tensor name -> shard file
        used = [int(m.group(1)) for m in map(SHARD_PATTERN.match, set(self.refs.values())) if m]
        self._next = max(used, default=0) + 1
        self._pending: dict[str, RawTensor] = {}
        self._pending_bytes = 0

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def add(self, example_id: Any, tensors: dict[str, RawTensor]) -> dict[str, str]:
        """Queue one example's tensors; returns {field: tensor name} for its row."""
        names = {}
        for field, tensor in tensors.items():
            name = tensor_name(example_id, field)
            # Copy: the reply's buffer is released with the reply.
            self._pending[name] = RawTensor(tensor.dtype, tuple(tensor.shape), bytes(tensor.data))
            self._pending_bytes += tensor.nbytes
            names[field] = name
        return names

    def flush(self) -> str | None:
        """Write the queued tensors as one new shard; returns its file name."""
        if not self._pending:
            return None
        name = f"shard-{self._next:05d}.safetensors"
        self._next += 1
        body = write_safetensors(self._pending, {"format": "intgrads-batch"})
        temporary = self.folder / (name + ".tmp")
        with temporary.open("wb") as stream:
            stream.write(body)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self.folder / name)
        fsync_dir(self.folder)
        for tensor in self._pending:
            self.refs[tensor] = name
        self._pending.clear()
        self._pending_bytes = 0
        return name

    def write_index(self) -> None:
        """``index.json``: every tensor name -> its shard (atomic replace)."""
        index = {"metadata": {"format": "intgrads-batch", "shards": sorted(set(self.refs.values())),
                              "tensors": len(self.refs)},
                 "weight_map": dict(sorted(self.refs.items()))}
        temporary = self.folder / (INDEX_NAME + ".tmp")
        temporary.write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(temporary, self.folder / INDEX_NAME)


def refs_from_rows(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The tensor -> shard map the journal's rows describe (the truth after a crash)."""
    refs = {}
    for row in rows:
        ref = row.get("tensors")
        if isinstance(ref, dict) and isinstance(ref.get("shard"), str):
            for name in (ref.get("names") or {}).values():
                refs[name] = ref["shard"]
    return refs


def remove_orphans(folder: Path, refs: dict[str, str]) -> list[str]:
    """Delete temporary files and shards no row refers to; returns their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    used = set(refs.values())
    removed = []
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".tmp") or (SHARD_PATTERN.match(path.name) and path.name not in used):
            path.unlink()
            removed.append(path.name)
    return removed
