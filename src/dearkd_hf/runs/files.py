"""Files written whole or not at all, and read back without trusting them: atomic JSON writes (a temporary file
renamed into place), a JSON reader that gives None for a missing or broken file, and the length check of a
``.safetensors`` file (a truncated copy is named before anything is loaded).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import uuid
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without an error, and
    removed when it raises, so ``path`` holds the old whole file or the new whole file, never a partial one."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, payload: Any, sort_keys: bool = False) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=sort_keys)


def read_json(path: str) -> Any:
    """The JSON value in ``path``, or None when the file is missing, unreadable or not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def safetensors_problem(path: str) -> str | None:
    """None when the file's length is exactly what its header announces (a truncated write is shorter)."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > size:
                return "is truncated"
            header = json.loads(f.read(header_size))
    except (struct.error, ValueError, UnicodeDecodeError):
        return "has no readable header (truncated)"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    return None if size == expected else f"is truncated ({size} of {expected} bytes)"
