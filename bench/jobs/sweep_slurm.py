"""The Slurm side of a sweep: waiting on its jobs through ``sacct``, and each job's state.

submitit's own waiting (``helpers.as_completed``) finds a finished job by its result
file, and asks ``sacct`` only at a growing interval (up to every 10 minutes with
``SlurmJob.watcher``'s delay): a cancelled job, or one that Slurm killed before it
could write a result, would be seen late. Here every poll makes ONE ``sacct`` call for
all the jobs still waited on (through submitit's watcher, which parses job arrays), so
the poll interval is what bounds the delay. Verified against a real Slurm 22.05 cluster
by ``tests/slurm`` (``nox -s slurm``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: sacct states of a job that has not ended (a requeued job passes through several).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "RESIZING",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "PREEMPTED",  # with PreemptMode=REQUEUE the job comes back
        "STAGE_OUT",
        "SIGNALING",
    }
)


def _watcher() -> Any:
    import submitit

    return submitit.SlurmJob.watcher


def job_state(job_id: str) -> str:
    """The job's state at the last ``sacct`` call, first word only (``CANCELLED by 0`` ->
    ``CANCELLED``); ``""`` when sacct has not reported the job (yet)."""
    info = _watcher().get_info(str(job_id), mode="cache")
    return (info.get("State") or "").split(" ")[0]


def refresh(job_ids: Iterable[str]) -> None:
    """One ``sacct`` call for ``job_ids`` (and the other jobs the watcher still follows)."""
    watcher = _watcher()
    for jid in job_ids:
        watcher.register_job(str(jid))
    watcher.update()


def wait_jobs(pairs: Iterable[tuple[Any, T]], poll_s: float) -> Iterator[tuple[Any, T]]:
    """Yield each ``(job, payload)`` once its job has ended: it wrote its result file, or
    ``sacct`` reports a state that is not active (completed, failed, cancelled, timeout,
    out of memory, node failure). Polls every ``poll_s`` seconds, one sacct call each."""
    pending = list(pairs)
    while pending:
        refresh(str(job.job_id) for job, _ in pending)
        for pair in list(pending):
            job = pair[0]
            state = job_state(str(job.job_id))
            if job.paths.result_pickle.exists() or (state and state not in ACTIVE_STATES):
                pending.remove(pair)
                yield pair
        if pending:
            time.sleep(poll_s)


def final_states(
    job_ids: Iterable[str], settle_s: float = 20.0, poll_s: float = 1.0
) -> dict[str, str]:
    """Each job's state per ``sacct``, waiting up to ``settle_s`` for the ones it still
    reports as active: the result file of a job is written a moment before slurmdbd
    records the job's end, so a state read at once can still say RUNNING."""
    ids = [str(j) for j in job_ids]
    deadline = time.monotonic() + settle_s
    while True:
        refresh(ids)
        states = {jid: job_state(jid) for jid in ids}
        if all(s and s not in ACTIVE_STATES for s in states.values()):
            return states
        if time.monotonic() >= deadline:
            return states
        time.sleep(poll_s)
