"""One owner per folder: a lock file holding who owns it (pid, host, start time).

Used by a training run (its run folder, so also by every sweep cell) and by the
preprocessing-cache build. The lock file is written in full to a temp file and then
hard-linked to its name, which fails if the name exists: the lock appears atomically
with its owner record, before anything else is written, and of two processes exactly
one gets it. The other gets :class:`LockBusy` naming the owner, or waits (``wait``).

A lock whose process is gone is *stale* and taken over with a message: same host and
the pid no longer runs (or runs another program: the process start time differs), or
the owner was an earlier run of this same Slurm job (a requeued job has the same
``SLURM_JOB_ID`` and a higher ``SLURM_RESTART_COUNT``). A lock owned by a process on
another host is never taken over (its pid cannot be checked from here).

Why not the ``filelock`` package: its ``FileLock`` (flock) keeps no owner record to
name and is unreliable on network file systems where sweeps write their results; its
``SoftFileLock`` has no stale-lock detection. The takeover of a stale lock is itself
serialised with ``flock`` on the folder (local, short), so two processes finding the
same stale lock cannot both take it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "DirLock", "LockBusy", "lock_owner", "owner_text"]

#: File name of a run folder's lock (``<run dir>/segbench.lock``).
LOCK_NAME = "segbench.lock"


class LockBusy(RuntimeError):
    """The folder is owned by another live process; the message names it."""

    def __init__(
        self,
        path: Path,
        owner: dict[str, Any] | None,
        what: str,
        hint: str,
        owned: Path | None = None,
    ) -> None:
        self.path, self.owner, self.what = Path(path), owner, what
        who = owner_text(owner) if owner else "another process"
        thing = owned if owned is not None else self.path.parent
        super().__init__(f"{what} {thing} is in use by {who} (lock {self.path}); {hint}")


def owner_text(owner: dict[str, Any]) -> str:
    """``pid 123 on host 'node1' since 2024-05-01T10:00:00+0000 (segbench train ...)``."""
    text = f"pid {owner.get('pid')} on host {owner.get('host')!r} since {owner.get('started')}"
    if owner.get("slurm_job_id"):
        text += f", Slurm job {owner['slurm_job_id']}"
    if owner.get("command"):
        text += f" ({owner['command']})"
    return text


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22; the command name (field 2) may hold spaces and parentheses: split after it
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OSError:
        return True  # cannot tell: never take over
    return True


def _restart_count() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def _command() -> str:
    if not sys.argv:
        return ""
    if Path(sys.argv[0]).name in ("segbench", "__main__.py"):  # the entry point, python -m
        return shlex.join(["segbench", *sys.argv[1:]])
    return shlex.join(sys.argv)


def _my_record(token: str) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "start_ticks": _proc_start_ticks(pid),
        "command": _command(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
        "slurm_restart_count": _restart_count(),
        "token": token,
    }


def lock_owner(path: str | Path) -> dict[str, Any] | None:
    """The owner record in a lock file; None when there is no lock file.

    Raises ValueError naming the file when it exists but is not a lock record.
    """
    path = Path(path)
    for _ in range(20):  # an O_EXCL fallback lock is briefly empty while its owner writes it
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if text.strip():
            break
        time.sleep(0.05)
    try:
        owner = json.loads(text)
    except ValueError:
        owner = None
    if not isinstance(owner, dict) or "pid" not in owner:
        raise ValueError(
            f"{path}: not a segbench lock file; delete it if no segbench process uses {path.parent}"
        )
    return owner


def _stale_reason(owner: dict[str, Any]) -> str | None:
    """Why ``owner`` no longer holds the lock, or None when it may still run."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and owner.get("slurm_job_id") == job:
        try:
            theirs = int(owner.get("slurm_restart_count") or 0)
        except (TypeError, ValueError):
            theirs = 0
        if _restart_count() > theirs:
            return f"an earlier run of Slurm job {job}, requeued since"
    if owner.get("host") != socket.gethostname():
        return None
    try:
        pid = int(owner["pid"])
    except (TypeError, ValueError):
        return None
    if pid == os.getpid():
        return None  # this very process: never stale
    if not _pid_alive(pid):
        return f"pid {pid} no longer runs on this host"
    ticks = owner.get("start_ticks")
    now = _proc_start_ticks(pid)
    if ticks is not None and now is not None and int(ticks) != now:
        return f"pid {pid} now belongs to another process"
    return None


@contextlib.contextmanager
def _serialised(folder: Path) -> Iterator[None]:
    """flock on the folder while a stale lock is replaced (no-op where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no takeover race protection, the link still is atomic
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # NFS maps flock to POSIX locks, which a read-only fd cannot take
            pass  # the takeover still re-reads the lock's token right before removing it
        yield
    finally:
        os.close(fd)  # closing releases the flock


class DirLock:
    """The lock file ``path`` (its folder is the thing owned); a context manager.

    ``wait``: seconds to wait for a live owner to finish (0: fail at once, ``math.inf``:
    wait as long as it takes), polling every ``poll`` seconds. ``what`` and ``owned``
    (default: the lock's folder) name the owned thing in messages; ``hint`` ends the busy
    error (what the user can do).
    """

    def __init__(
        self,
        path: str | Path,
        what: str = "run folder",
        wait: float = 0.0,
        poll: float = 1.0,
        hint: str = "wait for it to finish, or pass --wait",
        owned: str | Path | None = None,
    ) -> None:
        if wait < 0 or math.isnan(wait):
            raise ValueError(f"wait must be >= 0 seconds, got {wait}")
        self.path, self.what, self.wait, self.poll, self.hint = Path(path), what, wait, poll, hint
        self.owned = Path(owned) if owned is not None else self.path.parent
        self.token: str | None = None
        self.waited = False  # whether acquire() had to wait for another owner

    # ---------------------------------------------------------------- acquire / release

    def _try_create(self, token: str) -> bool:
        """Create the lock file with our record in one step; False when it exists."""
        data = json.dumps(_my_record(token), indent=1) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links here (some FUSE / SMB mounts): O_EXCL instead
                return self._create_exclusive(data)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _create_exclusive(self, data: str) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        return True

    def acquire(self) -> DirLock:
        """Take the lock (see the class doc); raises :class:`LockBusy` when it stays owned."""
        if self.token is not None:
            raise RuntimeError(f"{self.path}: already held by this DirLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait
        while True:
            if self._try_create(token):
                self.token = token
                return self
            owner = lock_owner(self.path)
            if owner is None:
                continue  # released between our attempt and the read: try again
            reason = _stale_reason(owner)
            if reason is not None:
                self._take_over(owner, reason)
                continue
            if time.monotonic() >= deadline:
                raise LockBusy(self.path, owner, self.what, self.hint, self.owned)
            if not self.waited:
                log.warning("%s %s is in use by %s: waiting", self.what, self.owned,
                            owner_text(owner))  # fmt: skip
                self.waited = True
            time.sleep(min(self.poll, max(deadline - time.monotonic(), 0.01)))

    def _take_over(self, owner: dict[str, Any], reason: str) -> None:
        with _serialised(self.path.parent):
            try:
                now = lock_owner(self.path)
            except ValueError:
                return
            if now is None or now.get("token") != owner.get("token"):
                return  # someone else replaced it meanwhile: re-examine
            self.path.unlink(missing_ok=True)
        log.warning(
            "taking over the stale lock %s of %s (%s)", self.path, owner_text(owner), reason
        )

    def release(self) -> None:
        """Remove the lock file if it still is ours (idempotent)."""
        if self.token is None:
            return
        token, self.token = self.token, None
        try:
            owner = lock_owner(self.path)
        except ValueError:
            return
        if owner is not None and owner.get("token") == token:
            self.path.unlink(missing_ok=True)

    @property
    def held(self) -> bool:
        return self.token is not None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
