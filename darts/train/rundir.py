"""A run directory belongs to one run at a time.

A run claims its directory when it starts and holds the claim until it ends: an exclusive
`flock` on `RUN_DIR/.lock`, which the kernel drops when the process ends however it ends
(Ctrl-C, kill -9, a crash), so a crashed run leaves nothing to clean up. A second run that
names the same directory, new or `--resume`, is refused with one line while the first holds
it. A run whose name is its start time (no `--name`) takes the next free `NAME-2`, `NAME-3`,
... instead, so that two runs started in the same second never share a directory.

While it runs, `RunClaim.check()` (before each checkpoint, history line or result) stops the
run with one line if its directory was removed or replaced under it, instead of writing a
new directory without its `config.json`.

A new run that stops before it wrote anything worth resuming (`WORTH_KEEPING`: a checkpoint,
the one-shot supernet, a history line) leaves no directory; anything else is kept, so an
interrupted run can be resumed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from darts.errors import UserError
from darts.train.files import write_error

LOCK = ".lock"
# What makes a run directory worth resuming: a search's or a final training's checkpoint,
# the one-shot evaluator's trained supernet, a multi-trial history with at least one line.
WORTH_KEEPING = ("checkpoint.pt", "supernet.pt", "history.jsonl")
_MAX_NUMBERED = 1000


class RunClaim:
    """The claim of one run on its directory (see the module docstring)."""

    def __init__(self, path: Path, fd: int, created: bool):
        self.path, self._fd, self.created = path, fd, created
        self._inode = os.fstat(fd).st_ino

    def check(self) -> None:
        """Raises a UserError if the directory was removed (or replaced) since it was claimed."""
        try:
            same = os.stat(self.path / LOCK).st_ino == self._inode
        except OSError:
            same = False
        if not same:
            raise UserError(f"{self.path} was removed while the run was going on; the run stopped "
                            f"without writing anything more (start it again, or with --name "
                            f"in another folder)")

    def worth_keeping(self) -> bool:
        for name in WORTH_KEEPING:
            try:
                if (self.path / name).stat().st_size > 0:
                    return True
            except OSError:
                continue
        return False

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the file drops the lock
            self._fd = -1

    @contextlib.contextmanager
    def held(self) -> Iterator[RunClaim]:
        """The run's life: the claim is released at the end, and a directory that this run
        created is removed again if the run fails before writing anything worth keeping."""
        try:
            yield self
        except BaseException:
            if self.created and not self.worth_keeping():
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        finally:
            self.release()


def _lock(run_dir: Path) -> int | None:
    """An fd holding the exclusive lock of `run_dir`, or None where another process holds it.
    A lock file removed (with its directory) between open and lock is not a claim: try again."""
    path = run_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(run_dir: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int((run_dir / LOCK).read_text().split()[0])
        return f" (process {pid})"
    return ""


def _claim(run_dir: Path) -> RunClaim | None:
    """The claim of `run_dir` (made if missing), or None where another run holds it."""
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = _lock(run_dir)
    except OSError as e:
        raise write_error(run_dir / LOCK, e) from None
    return None if fd is None else RunClaim(run_dir, fd, created)


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run that `--resume` continues."""
    return (run_dir / "checkpoint.pt").exists() or (run_dir / "history.jsonl").exists()


def claim_new(save: str | os.PathLike, name: str, *, numbered: bool = False) -> RunClaim:
    """A new run's claim of `save/name`. A directory that holds a run, or that another run
    holds, is refused with one line; with `numbered` (a time-stamped name, not the user's)
    the next free `name-2`, `name-3`, ... is taken instead."""
    for k in range(1, _MAX_NUMBERED + 1):
        run_dir = Path(save) / (name if k == 1 else f"{name}-{k}")
        if holds_run(run_dir):
            if numbered:
                continue
            raise UserError(f"{run_dir} already holds a run: pass --resume {run_dir} or "
                            f"another --name")
        claim = _claim(run_dir)
        if claim is not None and holds_run(run_dir):  # a run that ended before the lock
            claim.release()
            if numbered:
                continue
            raise UserError(f"{run_dir} already holds a run: pass --resume {run_dir} or "
                            f"another --name")
        if claim is not None:
            return claim
        if not numbered:
            raise UserError(f"{run_dir} is in use by another run{_holder(run_dir)}: give this "
                            f"run another --name, or wait for that one to end")
    raise UserError(f"{Path(save) / name}: {_MAX_NUMBERED} runs of that name exist; pass --name")


def claim_existing(run_dir: str | os.PathLike) -> RunClaim:
    """`--resume RUN_DIR`'s claim; refused with one line while another run holds it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run directory")
    claim = _claim(run_dir)
    if claim is None:
        raise UserError(f"--resume {run_dir}: the run is still going on{_holder(run_dir)}; "
                        f"wait for it to end or stop it first")
    return claim


class _Unclaimed(RunClaim):
    """The run directory as seen by a rank other than 0 under torchrun: rank 0 holds it."""

    def __init__(self, path: Path):
        self.path, self._fd, self.created = path, -1, False

    def check(self) -> None:
        pass


def claim_run_dir(d, resume_dir: str | os.PathLike | None, save: str | os.PathLike, name: str,
                  *, numbered: bool) -> RunClaim:
    """The run's claim: of `resume_dir` when resuming, else of a new `save/name` (see
    `claim_new`). Under torchrun (`d`, a `darts.train.distributed.Dist`) rank 0 claims, and
    the other ranks learn the path (and any refusal) from it."""
    from darts.train import distributed

    mine: list[RunClaim] = []

    def claim() -> str:
        mine.append(claim_existing(resume_dir) if resume_dir is not None
                    else claim_new(save, name, numbered=numbered))
        return str(mine[0].path)

    path = distributed.on_main(d, claim)
    return mine[0] if mine else _Unclaimed(Path(path))
