"""Atomic file writes: a reader, or a run killed mid-write, never sees half a file.

Every file a run writes (checkpoints, configs, metrics, genotypes, pictures) goes through
`atomic_open`: the bytes go to a temporary file in the same directory, are flushed to disk,
and the file is renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file that replaces `path` when the block ends without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def save_json(data: Any, path: str | os.PathLike) -> None:
    with atomic_open(path) as f:
        f.write((json.dumps(data, indent=2) + "\n").encode("utf-8"))
