"""Atomic file writes: a reader, or a run killed mid-write, never sees half a file.

Every file a run writes (checkpoints, configs, metrics, genotypes, pictures) goes through
`atomic_open`: the bytes go to a temporary file in the same directory, are flushed to disk,
and the file is renamed over the target in one step. A write that the disk refuses (full,
over quota, read-only, no permission) leaves the previous file as it was and raises one
`UserError` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from darts.errors import UserError

_FIXES = {
    errno.ENOSPC: "free some space on its disk",
    errno.EDQUOT: "free some of your disk quota",
    errno.EROFS: "the file system is read-only: choose another --save folder",
    errno.EACCES: "check the folder's permissions or choose another --save folder",
    errno.EPERM: "check the folder's permissions or choose another --save folder",
    errno.EFBIG: "the file outgrew the largest file allowed (ulimit -f, or the file system's "
                 "limit): raise the limit",
}


def write_error(path: str | os.PathLike, error: OSError) -> UserError:
    """The one-line UserError of a write to `path` that failed with `error`."""
    fix = _FIXES.get(error.errno or 0, "check the disk and the folder")
    reason = error.strerror or type(error).__name__
    return UserError(f"cannot write {path}: {reason}; {fix} (a previous version of the file is "
                     f"unchanged)")


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind `error`, if any: torch.save reports a failed write as a RuntimeError
    whose context is the file's OSError."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file that replaces `path` when the block ends without an exception."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        os_error = _os_error_in(e)
        if os_error is not None:
            raise write_error(path, os_error) from None
        raise


def json_safe(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None: JSON has no NaN (Python's
    `json` would write a bare `NaN`, which other readers refuse)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def save_json(data: Any, path: str | os.PathLike) -> None:
    """Writes `data` as valid JSON (a missing number, NaN or infinite, as null), atomically."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False)
    with atomic_open(path) as f:
        f.write((text + "\n").encode("utf-8"))
