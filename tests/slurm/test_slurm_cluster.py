"""``segbench sweep --executor slurm`` against a real one-node Slurm cluster.

Run by ``nox -s slurm`` (which starts the cluster with ``.ci/slurm up`` and stops it
after); skipped elsewhere. Every cell is a real engine run of MALUNet on 16 synthetic
64x64 images in its own Slurm job: 1 epoch for the sweeps that only need a result, 15
for the cells that are cancelled or requeued while they train (long enough that they
are still training when Slurm kills them 2 s after its SIGTERM, which submitit ignores).

What each test checks against Slurm itself (``sacct``, the ``sbatch`` calls), not
against segbench's own report of it:

- a 4-cell sweep is ONE job array whose ``%2`` limit bounds the running tasks, and
  ``cells.csv`` holds every cell's array job id and its ``sacct`` state;
- rerunning a finished sweep calls ``sbatch`` zero times;
- ``scancel`` of a running cell: reported ``cancelled`` by name with a non-zero exit,
  the other cell finishes intact, and a rerun submits only that cell, which resumes
  from its checkpoint;
- ``scontrol requeue`` of a running cell: the same job runs again, resumes from its
  checkpoint and ends with exactly the metrics of an uninterrupted run of that seed;
- a cell with bad input fails with its Slurm log path and error (no hang), and a rerun
  after the input is fixed submits only that cell.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from bench.cli import main
from bench.data.synthetic import make_synthetic
from bench.jobs import sweep_definition, sweep_planning

# Minutes. submitit asks Slurm for USR2 90 s before the limit, and Slurm may send it up
# to 60 s early: with 1 minute a short job fails as "timed-out" by chance.
TIME = 3
TINY = {"epochs": 1, "image_size": 64, "batch_size": 4, "threads": 1}
# Long enough that a cell cannot finish between its first checkpoint and the moment
# scancel / requeue takes effect (KillWait 2 s after SIGTERM, which submitit ignores): an
# epoch of TINY takes about 0.2 s on an idle 2-core machine, so 15 epochs (3 s) raced the
# kill there and the requeued job found a finished run (seen in CI on the idle machine).
LONG = {**TINY, "epochs": 100}

pytestmark = pytest.mark.timeout(300)  # a hang fails the test instead of the CI job


def _sweep_file(folder: Path, name: str, datasets: list[dict], seeds: list[int], **extra) -> Path:
    raw = {
        "name": name,
        "models": ["malunet"],
        "datasets": datasets,
        "seeds": seeds,
        "overrides": extra.pop("overrides", TINY),
        "slurm": {"time": TIME, "cpus_per_task": 1, **extra.pop("slurm", {})},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(path: Path, results: Path) -> list[str]:
    return [
        "sweep",
        str(path),
        "--executor",
        "slurm",
        "--results",
        str(results),
        "--poll",
        "1",
        "--quiet",
    ]


def _table(results: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(results / "sweeps" / name / "cells.csv", dtype=str).fillna("")


def _sacct(job: str, duplicates: bool = False) -> list[dict[str, str]]:
    """sacct's records of ``job`` (all of a requeued job's runs with ``duplicates``)."""
    cmd = ["sacct", "-j", job, "-X", "-P", "-o", "JobID,State,Start,End,ExitCode"]
    out = subprocess.run(cmd + (["-D"] if duplicates else []), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    return [dict(zip(lines[0].split("|"), ln.split("|"))) for ln in lines[1:]]


def _ended(job: str, duplicates: bool = False, timeout: float = 30) -> list[dict[str, str]]:
    """sacct's records once the last one has ended (slurmdbd lags the jobs by a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _sacct(job, duplicates)
        if rows and rows[-1]["End"] not in ("", "Unknown") or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def _until(what: str, check: Callable[[], Any], timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


def _in_thread(argv: list[str]) -> Future:
    """``segbench sweep`` in a thread, so the test can act on its jobs while it waits."""
    fut: Future = Future()

    def run() -> None:
        try:
            fut.set_result(main(argv))
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            fut.set_exception(err)

    threading.Thread(target=run, daemon=True).start()
    return fut


def _run_dirs(path: Path, results: Path) -> list[Path]:
    cells = sweep_definition.load_sweep(path).cells()
    return [o.run_dir for o in sweep_planning.plan_cells(cells, results)]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _trained_rows(run_dir: Path) -> pd.DataFrame:
    """log.csv without what depends on the machine or the clock (times, speeds, host)."""
    log = pd.read_csv(run_dir / "log.csv")
    return log[[c for c in log.columns if not c.endswith(("time_s", "per_s")) and c != "host"]]


def _tasks(call: Any) -> int:
    """Cells in one sbatch call: an array ``a-b%k`` has b - a + 1; submitit submits a
    single cell as a plain job (no array)."""
    if call.array == "-":
        return 1
    first, last = call.array.split("%")[0].split("-")
    return int(last) - int(first) + 1


def _running_task(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip() == "RUNNING"


# ------------------------------------------------------------ a 4-cell job array


@pytest.fixture(scope="module")
def array_sweep(slurm_cluster, sbatch_log, syn_data, tmp_path_factory) -> dict[str, Any]:
    """The 4-cell sweep (seeds 0-3), run once as an array of at most 2 running tasks."""
    folder = tmp_path_factory.mktemp("array")
    path = _sweep_file(
        folder,
        "arr",
        [{"name": "syn", "root": str(syn_data)}],
        [0, 1, 2, 3],
        slurm={"array_parallelism": 2},
    )
    results = folder / "results"
    before = len(sbatch_log.calls())
    code = main(_sweep(path, results))
    return {
        "path": path,
        "results": results,
        "code": code,
        "calls": sbatch_log.calls()[before:],
        "table": _table(results, "arr"),
    }


def test_array_sweep_records_job_ids_and_sacct_states(array_sweep):
    assert array_sweep["code"] == 0
    calls = array_sweep["calls"]
    assert [c.array for c in calls] == ["0-3%2"]  # one array for the 4 cells, 2 at a time
    array = calls[0].job
    table = array_sweep["table"]
    assert table["status"].tolist() == ["done"] * 4
    assert table["job"].tolist() == [f"{array}_{i}" for i in range(4)]
    # every cell's state in cells.csv is what sacct itself says about its job
    for job, state in zip(table["job"], table["slurm_state"]):
        rows = _ended(job)
        assert [r["State"] for r in rows] == ["COMPLETED"] == [state]
        assert rows[0]["ExitCode"] == "0:0"
    for run_dir, path in zip(_run_dirs(array_sweep["path"], array_sweep["results"]), table["path"]):
        assert Path(path) == run_dir and _metrics(run_dir)["status"] == "finished"
    # The %2 limit, not the node (4 CPU slots, 1 per task), bounded the running tasks.
    spans = []
    for job in table["job"]:
        row = _ended(job)[0]
        spans.append((datetime.fromisoformat(row["Start"]), datetime.fromisoformat(row["End"])))
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap == 2, f"tasks running at once: {overlap} (spans {spans})"


def test_rerun_of_a_finished_sweep_submits_nothing(array_sweep, sbatch_log):
    results, path = array_sweep["results"], array_sweep["path"]
    mtimes = [(d / "metrics.json").stat().st_mtime_ns for d in _run_dirs(path, results)]
    before = len(sbatch_log.calls())
    assert main(_sweep(path, results)) == 0
    assert sbatch_log.calls()[before:] == []  # no sbatch call at all
    table = _table(results, "arr")
    assert table["status"].tolist() == ["skipped"] * 4
    # the table keeps naming the job that produced each run, and its state
    assert table["job"].tolist() == array_sweep["table"]["job"].tolist()
    assert table["slurm_state"].tolist() == ["COMPLETED"] * 4
    assert [(d / "metrics.json").stat().st_mtime_ns for d in _run_dirs(path, results)] == mtimes


# ---------------------------------------------------------------- a failing cell


def test_failed_cell_reported_with_its_slurm_log_then_resubmitted_alone(
    slurm_cluster, sbatch_log, syn_data, tmp_path, capsys
):
    broken = tmp_path / "broken"
    broken.mkdir()  # a folder, so the sweep file is valid, but no images in it: bad input
    datasets = [{"name": "syn", "root": str(syn_data)}, {"name": "broken", "root": str(broken)}]
    path = _sweep_file(tmp_path, "fail", datasets, [0])
    results = tmp_path / "results"
    before = len(sbatch_log.calls())
    code = main(_sweep(path, results))
    out = capsys.readouterr()
    assert code == 3  # PARTIAL: one cell done, one failed
    table = _table(results, "fail").set_index("cell")
    good, bad = "syn/malunet/fair-e1/seed0", "broken/malunet/fair-e1/seed0"
    assert table.loc[good, "status"] == "done" and table.loc[bad, "status"] == "failed"
    job = table.loc[bad, "job"]
    assert table.loc[bad, "slurm_state"] == "FAILED" == _ended(job)[0]["State"]
    log = Path(table.loc[bad, "path"])
    assert log.name == f"{job}_0_log.err" and log.is_file()
    error = table.loc[bad, "error"]
    assert str(broken) in error  # the error names the bad input ...
    assert error.splitlines()[-1] in log.read_text()  # ... as the job's own log says it
    assert f"{bad}: {error}" in out.out and str(log) in out.out
    assert "failed or cancelled cells" in out.err

    # With the input fixed, the rerun submits the failed cell only.
    make_synthetic(broken, n=16, size=(64, 64), seed=1)
    calls = len(sbatch_log.calls())
    assert main(_sweep(path, results)) == 0
    new = sbatch_log.calls()[calls:]
    assert [_tasks(c) for c in new] == [1], new  # one job for one cell
    table = _table(results, "fail").set_index("cell")
    assert table.loc[good, "status"] == "skipped" and table.loc[bad, "status"] == "done"
    assert table.loc[bad, "job"] == new[0].job
    assert len(sbatch_log.calls()) == before + 2


# ------------------------------------------------------------ scancel, requeue


def test_scancel_reports_the_cell_cancelled_and_a_rerun_resumes_it(
    slurm_cluster, sbatch_log, syn_data, tmp_path, capsys
):
    path = _sweep_file(
        tmp_path, "cancel", [{"name": "syn", "root": str(syn_data)}], [0, 1], overrides=LONG
    )
    results = tmp_path / "results"
    victim, other = _run_dirs(path, results)
    before = len(sbatch_log.calls())
    sweep = _in_thread(_sweep(path, results))
    array = _until("the sweep's sbatch call", lambda: sbatch_log.calls()[before:])[0].job
    job = f"{array}_0"
    _until("a checkpoint of the running cell", lambda: (victim / "checkpoints/last.pt").is_file())
    assert _running_task(job)
    subprocess.run(["scancel", job], check=True)
    code = sweep.result(timeout=240)
    out = capsys.readouterr()

    assert code == 3  # PARTIAL: the cancelled cell counts as not done
    table = _table(results, "cancel")
    label = f"syn/malunet/fair-e{LONG['epochs']}/seed0"
    assert table["status"].tolist() == ["cancelled", "done"], (
        "the cancelled cell finished before Slurm killed it: make LONG longer"
        if table["status"][0] == "done"
        else table
    )
    assert table["job"].tolist() == [job, f"{array}_1"]
    assert table["slurm_state"].tolist() == ["CANCELLED", "COMPLETED"]
    assert _ended(job)[0]["State"].startswith("CANCELLED")
    assert f"{label}: Slurm job {job} was cancelled" in out.out
    assert not (victim / "metrics.json").exists() and (victim / "checkpoints/last.pt").is_file()
    assert _metrics(other)["status"] == "finished"  # the other cell is intact
    other_mtime = (other / "metrics.json").stat().st_mtime_ns

    calls = len(sbatch_log.calls())
    assert main(_sweep(path, results)) == 0
    new = sbatch_log.calls()[calls:]
    assert [_tasks(c) for c in new] == [1], new  # only the cancelled cell again
    table = _table(results, "cancel")
    assert table["status"].tolist() == ["done", "skipped"]
    assert _metrics(victim)["status"] == "finished"
    # it resumed from its checkpoint (epoch >= 1), it did not start over
    resumed = json.loads((victim / "manifest.json").read_text())["resumed_at_epoch"]
    assert resumed is not None and 1 <= resumed < LONG["epochs"]
    assert (other / "metrics.json").stat().st_mtime_ns == other_mtime


@pytest.fixture(scope="module")
def uninterrupted(syn_data, tmp_path_factory) -> Path:
    """The reference: seed 0 of the LONG cell trained start to end in this process."""
    from bench.engine.train import run_training

    folder = tmp_path_factory.mktemp("reference")
    path = _sweep_file(folder, "ref", [{"name": "syn", "root": str(syn_data)}], [0], overrides=LONG)
    (cell,) = sweep_definition.load_sweep(path).cells()
    return Path(run_training(cell.config(), results_dir=folder / "results", quiet=True))


def test_requeue_resumes_from_the_checkpoint_with_the_uninterrupted_metrics(
    slurm_cluster, sbatch_log, syn_data, uninterrupted, tmp_path
):
    path = _sweep_file(
        tmp_path, "requeue", [{"name": "syn", "root": str(syn_data)}], [0], overrides=LONG
    )
    results = tmp_path / "results"
    (run_dir,) = _run_dirs(path, results)
    before = len(sbatch_log.calls())
    sweep = _in_thread(_sweep(path, results))
    job = _until("the sweep's sbatch call", lambda: sbatch_log.calls()[before:])[
        0
    ].job  # one cell: a plain job
    _until("a checkpoint of the running cell", lambda: (run_dir / "checkpoints/last.pt").is_file())
    assert _running_task(job)
    subprocess.run(["scontrol", "requeue", job], check=True)  # what preemption does
    assert sweep.result(timeout=240) == 0

    assert len(sbatch_log.calls()) == before + 1  # Slurm requeued the job, nobody resubmitted
    table = _table(results, "requeue")
    assert table["status"].tolist() == ["done"] and table["job"].tolist() == [job]
    # sacct: the job ran twice, the first run ended REQUEUED
    assert [r["State"] for r in _ended(job, duplicates=True)] == ["REQUEUED", "COMPLETED"]
    resumed = json.loads((run_dir / "manifest.json").read_text())["resumed_at_epoch"]
    assert resumed is not None and 1 <= resumed < LONG["epochs"], (
        "the requeued job did not resume from a checkpoint"
    )
    # bit-identical to the uninterrupted run of the same seed (CPU, 1 thread)
    got, want = _metrics(run_dir), _metrics(uninterrupted)
    assert got["config_hash"] == want["config_hash"]
    assert got["test"] == want["test"] and got["best_epoch"] == want["best_epoch"]
    pd.testing.assert_frame_equal(_trained_rows(run_dir), _trained_rows(uninterrupted))
