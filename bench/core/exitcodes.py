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
| 75 | ``BUSY`` | the run folder (or cache) is owned by another live process (``--wait`` waits) |
| 130 | ``INTERRUPTED`` | Ctrl-C (128 + SIGINT); a training run saved its position first |
| 143 | ``TERMINATED`` | SIGTERM (128 + SIGTERM); a training run saved its position first |

75 is ``EX_TEMPFAIL`` of BSD's ``sysexits.h``: "try again later".
"""

from __future__ import annotations

from collections.abc import Iterable

OK = 0
FAILED = 1
USAGE = 2
PARTIAL = 3
BUSY = 75
INTERRUPTED = 130
TERMINATED = 143

#: code -> name, for documentation and messages
NAMES = {
    OK: "OK",
    FAILED: "FAILED",
    USAGE: "USAGE",
    PARTIAL: "PARTIAL",
    BUSY: "BUSY",
    INTERRUPTED: "INTERRUPTED",
    TERMINATED: "TERMINATED",
}


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
