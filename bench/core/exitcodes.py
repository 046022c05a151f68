"""The exit codes of every ``segbench`` command, in one place.

A command that runs several units of work (models, configurations, cells, files) exits
:data:`OK` when all of them succeeded, :data:`PARTIAL` when some failed and others did
not (the failures are then listed in full on stderr), and :data:`FAILED` when none
succeeded, so a script or a scheduler can tell "nothing to use" from "look at the
failures". Skipped units (a variant this device cannot run) are neither.

| code | name | meaning |
|---|---|---|
| 0 | ``OK`` | everything asked for was done |
| 1 | ``FAILED`` | the work failed: every unit of work failed, or the one unit did |
| 2 | ``USAGE`` | bad input (argument, file, configuration): one line naming it |
| 3 | ``PARTIAL`` | some units failed, the others succeeded: the failures are listed |
| 74 | ``IO_ERROR`` | a write failed on the machine's side (disk full, quota, I/O or read-only file system): one line naming the file; free space and run the same command again |
| 75 | ``BUSY`` | the run folder (or cache) is owned by another live process (``--wait`` waits) |
| 130 | ``INTERRUPTED`` | Ctrl-C (128 + SIGINT); a training run saved its position first |
| 143 | ``TERMINATED`` | SIGTERM (128 + SIGTERM); a training run saved its position first |

74 and 75 are ``EX_IOERR`` and ``EX_TEMPFAIL`` of BSD's ``sysexits.h``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

OK = 0
FAILED = 1
USAGE = 2
PARTIAL = 3
IO_ERROR = 74
BUSY = 75
INTERRUPTED = 130
TERMINATED = 143

#: code -> name, for documentation and messages
NAMES = {
    OK: "OK",
    FAILED: "FAILED",
    USAGE: "USAGE",
    PARTIAL: "PARTIAL",
    IO_ERROR: "IO_ERROR",
    BUSY: "BUSY",
    INTERRUPTED: "INTERRUPTED",
    TERMINATED: "TERMINATED",
}


#: errno values of a failing machine rather than a bad argument (:data:`IO_ERROR`)
IO_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.ENOMEM}
)


def is_io_failure(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is a disk-full / I/O failure."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, OSError) and err.errno in IO_ERRNOS:
            return True
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
        seen += 1
    return False


def outcome_code(succeeded: int, failed: int) -> int:
    """The exit code of a command that ran ``succeeded + failed`` units of work.

    No failure: :data:`OK` (also when nothing ran, e.g. everything was skipped and the
    caller decided that is fine); failures only: :data:`FAILED`; both: :data:`PARTIAL`.
    """
    if succeeded < 0 or failed < 0:
        raise ValueError(f"counts must be >= 0, got succeeded={succeeded}, failed={failed}")
    if not failed:
        return OK
    return PARTIAL if succeeded else FAILED


def failure_lines(failures: Iterable[tuple[str, str]]) -> list[str]:
    """``"<unit>: <reason>"`` lines, reasons in full (whitespace runs folded to one space,
    never cut: a truncated reason hides the part that says what to do)."""
    return [f"{unit}: {' '.join(str(reason).split())}" for unit, reason in failures]


def summary_line(what: str, succeeded: int, failed: int, skipped: int = 0) -> str:
    """One line for stderr, e.g. ``2 of 3 configurations failed (1 skipped)``."""
    tail = f" ({skipped} skipped)" if skipped else ""
    total = succeeded + failed
    if not failed:
        return f"{succeeded} of {total} {what} succeeded{tail}"
    return f"{failed} of {total} {what} failed{tail}"
