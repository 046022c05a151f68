"""How a sweep reads Slurm job states (bench.jobs.sweep_slurm) and turns them into cell
outcomes, against a fake ``sacct`` watcher: fast, no cluster. The real cluster is
exercised by tests/slurm (``nox -s slurm``); these pin the decisions in between."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.jobs import sweep_slurm
from bench.jobs.sweep_execution import _collect
from bench.jobs.sweep_planning import CellOutcome


class FakeWatcher:
    """submitit's SlurmJob.watcher as the sweep uses it: ``register_job``, ``update`` (one
    sacct call) and ``get_info``. ``script`` gives each job's state per sacct call."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = script
        self.calls = 0
        self.registered: set[str] = set()
        self.on_update: dict[int, Any] = {}  # call number -> action (a job writes a result)

    def register_job(self, job_id: str) -> None:
        self.registered.add(job_id)

    def update(self) -> None:
        self.calls += 1
        if self.calls in self.on_update:
            self.on_update[self.calls]()

    def get_info(self, job_id: str, mode: str = "cache") -> dict[str, str]:
        states = self.script.get(job_id, [])
        if not states:
            return {}
        return {"State": states[min(self.calls, len(states)) - 1]}


class FakeJob:
    def __init__(self, tmp: Path, job_id: str, result: Any = None, error: str = "") -> None:
        self.job_id = job_id
        self.paths = SimpleNamespace(
            result_pickle=tmp / f"{job_id}_result.pkl", stderr=tmp / f"{job_id}.err"
        )
        self._result, self._error = result, error

    def result(self) -> Any:
        if self._error:
            raise RuntimeError(self._error)
        return self._result


@pytest.fixture
def watcher(monkeypatch: pytest.MonkeyPatch):
    def install(script: dict[str, list[str]]) -> FakeWatcher:
        w = FakeWatcher(script)
        monkeypatch.setattr(sweep_slurm, "_watcher", lambda: w)
        return w

    return install


def test_job_state_keeps_the_first_word(watcher) -> None:
    watcher({"7": ["CANCELLED by 0"]}).update()
    assert sweep_slurm.job_state("7") == "CANCELLED"
    assert sweep_slurm.job_state("8") == ""  # not reported (yet)


def test_wait_jobs_ends_a_cancelled_job_without_a_result_and_waits_for_a_running_one(
    watcher, tmp_path: Path
) -> None:
    w = watcher({"1": ["RUNNING", "CANCELLED by 0"], "2": ["PENDING", "RUNNING", "RUNNING"]})
    a, b = FakeJob(tmp_path, "1"), FakeJob(tmp_path, "2")
    w.on_update[3] = lambda: b.paths.result_pickle.write_bytes(b"x")  # job 2 finishes
    seen = [(payload, w.calls) for _, payload in sweep_slurm.wait_jobs([(a, "a"), (b, "b")], 0)]
    # one sacct call per poll covers both jobs; "a" ends at the 2nd call (CANCELLED), "b"
    # (still RUNNING per sacct) at the 3rd, by its result file
    assert seen == [("a", 2), ("b", 3)]
    assert w.registered == {"1", "2"}


def test_final_states_waits_for_sacct_to_record_the_end(watcher) -> None:
    w = watcher({"5": ["RUNNING", "RUNNING", "COMPLETED"]})
    assert sweep_slurm.final_states(["5"], settle_s=30, poll_s=0) == {"5": "COMPLETED"}
    assert w.calls == 3
    # a state still active at the deadline is returned as it is, not waited on forever
    watcher({"6": ["RUNNING"]})
    assert sweep_slurm.final_states(["6"], settle_s=0, poll_s=0) == {"6": "RUNNING"}


def _outcome(tmp: Path) -> CellOutcome:
    return CellOutcome(cell=None, status="new", run_dir=tmp)  # type: ignore[arg-type]


def test_a_cancelled_job_without_a_result_is_cancelled_not_failed(tmp_path: Path) -> None:
    out = _outcome(tmp_path)
    _collect(FakeJob(tmp_path, "11", error="UncompletedJobError"), out, "CANCELLED")
    assert out.status == "cancelled"
    assert out.slurm_state == "CANCELLED" and "rerun the sweep" in out.error


def test_a_timed_out_job_without_a_result_fails_naming_the_state(tmp_path: Path) -> None:
    out = _outcome(tmp_path)
    _collect(FakeJob(tmp_path, "12", error="UncompletedJobError: no result"), out, "TIMEOUT")
    assert out.status == "failed"
    assert out.error.startswith("Slurm job 12 ended TIMEOUT")


def test_a_job_with_a_result_is_done_whatever_sacct_still_says(tmp_path: Path) -> None:
    job = FakeJob(tmp_path, "13", result={"status": "finished", "run_dir": str(tmp_path)})
    job.paths.result_pickle.write_bytes(b"x")
    out = _outcome(tmp_path)
    _collect(job, out, "CANCELLED")  # cancelled after it wrote its result: it finished
    assert out.status == "done" and out.run_dir == tmp_path
