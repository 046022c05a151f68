"""bench.sweep: sweep files, skip / resume / failure handling, local and Slurm executors.

The end-to-end tests train real (tiny) runs with the engine: MALUNet and EGE-UNet, the
two smallest registry models, 1 epoch on 8 synthetic 32x32 images, one thread each.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.cli import main
from bench.data.synthetic import make_synthetic
from bench.jobs import sweep_definition, sweep_execution, sweep_planning

MODELS = ["malunet", "egeunet"]
TINY = {"epochs": 1, "image_size": 32, "batch_size": 4, "threads": 1}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "syn", n=8, size=(32, 32), seed=0)


def _raw(data_root: Path, **extra) -> dict:
    """A sweep file's content: both tiny models on the synthetic set, seeds 0 and 1."""
    raw = {
        "name": "t",
        "models": MODELS,
        "datasets": [{"name": "syn", "root": str(data_root)}],
        "seeds": [0, 1],
        "overrides": dict(TINY),
    }
    raw.update(extra)
    return raw


def _sweep(data_root: Path, **extra) -> sweep_definition.SweepConfig:
    return sweep_definition.sweep_from_dict(_raw(data_root, **extra))


def _write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _mtimes(results: Path) -> dict[str, int]:
    return {
        str(p.relative_to(results)): p.stat().st_mtime_ns
        for p in results.glob("runs/*/*/*/seed*/metrics.json")
    }


# ----------------------------------------------------------------------- sweep files


def test_load_sweep_expands_cells_and_resolves_roots(tmp_path, data_root):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    rel = os.path.relpath(data_root, cfg_dir)
    path = _write_yaml(
        cfg_dir / "grid.yaml",
        {
            "models": ["mal*", "egeunet"],  # a registry pattern and a name
            "datasets": [{"name": "first", "root": rel}, {"root": str(data_root)}],
            "seeds": [0, 1, 2],
            "input_sizes": [32, 64],
            "overrides": {"epochs": 2},
        },
    )
    cfg = sweep_definition.load_sweep(path)
    assert cfg.name == "grid" and cfg.recipe == "fair"
    assert cfg.models == ("malunet", "egeunet")
    assert cfg.datasets == (("first", str(data_root)), (data_root.name, str(data_root)))
    cells = cfg.cells()
    assert len(cells) == 2 * 2 * 2 * 3
    assert len({c.label for c in cells}) == len(cells)  # every cell has its own run folder
    c = cells[0]
    assert (c.model, c.dataset, c.seed, c.input_size) == ("malunet", "first-32px", 0, 32)
    tc = c.config()
    assert (tc.model, tc.image_size, tc.epochs, tc.seed, tc.dataset_name) == (
        "malunet",
        32,
        2,
        0,
        "first-32px",
    )
    assert Path(tc.data) == data_root


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown key.*colour"),
        ({"models": ["malunett"]}, "models: unknown model 'malunett'.*Did you mean: malunet"),
        ({"models": ["nothing_*"]}, "pattern 'nothing_\\*' matches no registered model"),
        (
            {"datasets": [{"name": "x", "root": "/no/such/dir"}]},
            "data root /no/such/dir is not a folder",
        ),
        ({"seeds": [0, "one"]}, "seeds: expected integers"),
        ({"seeds": [1, 1]}, "seeds: repeated values"),
        ({"overrides": {"epoch": 3}}, "unknown TrainConfig field.*epoch"),
        ({"overrides": {"seed": 3}}, "overrides.seed: set by the sweep itself"),
        ({"overrides": {"epochs": 0}}, "epochs=0: must be >= 1"),
        ({"recipe": "nosuch"}, "unknown recipe 'nosuch'"),
        ({"slurm": {"partitions": "gpu"}}, "slurm: unknown option.*partitions"),
    ],
)
def test_sweep_file_errors_name_file_and_key(tmp_path, data_root, change, message):
    raw = {"models": MODELS, "datasets": [{"name": "syn", "root": str(data_root)}]}
    raw.update(change)
    path = _write_yaml(tmp_path / "bad.yaml", raw)
    with pytest.raises(sweep_definition.SweepError, match=message) as err:
        sweep_definition.load_sweep(path)
    assert str(path) in str(err.value)


def test_sweep_file_not_found_or_not_yaml(tmp_path):
    with pytest.raises(sweep_definition.SweepError, match="sweep file not found"):
        sweep_definition.load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a\n")
    with pytest.raises(sweep_definition.SweepError, match="bad.yaml: not valid YAML"):
        sweep_definition.load_sweep(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(sweep_definition.SweepError, match="mapping at the top level"):
        sweep_definition.load_sweep(bad)


def test_example_sweeps_are_valid(shared_dir):
    root = Path(sweep_execution.__file__).parent / "sweeps"
    files = sorted(root.glob("*.yaml"))
    assert files
    for path in files:
        cfg = sweep_definition.load_sweep(path)
        assert cfg.cells()


# ------------------------------------------------------------------ end to end


def _acceptance(tmp_path: Path, data_root: Path, executor: str, **kwargs) -> None:
    """2 models x 2 seeds x 1 epoch; a failing fifth cell; skip; re-run one deleted cell."""
    results = tmp_path / "results"
    sweep = _sweep(data_root)
    cells = sweep.cells()
    assert len(cells) == 4
    # A fifth cell that fails inside its job (the registry does not know the model).
    bad = sweep_definition.Cell(
        model="no_such_model",
        dataset="syn",
        data_root=str(data_root),
        seed=0,
        overrides=cells[0].overrides,
    )
    out = sweep_execution.run_cells(
        cells + [bad],
        results_dir=results,
        executor=executor,
        logs_dir=tmp_path / "logs",
        quiet=True,
        **kwargs,
    )
    status = {o.cell.label: o.status for o in out}
    assert status == {**{c.label: "done" for c in cells}, bad.label: "failed"}
    failed = out[-1]
    assert failed.log is not None and failed.log.is_file()
    assert "unknown model 'no_such_model'" in failed.log.read_text()
    assert "UnknownModelError: unknown model 'no_such_model'" in failed.error
    if executor == "local":  # the job's own stderr, under its process id
        assert failed.job_id.isdigit() and len({o.job_id for o in out}) == 5
        assert failed.log == tmp_path / "logs" / f"{failed.job_id}_0_log.err"
    for o in out[:4]:
        m = json.loads((o.run_dir / "metrics.json").read_text())
        assert m["status"] == "finished" and m["config_hash"] == o.config_hash
        assert (o.run_dir / "per_image.csv").is_file()
        # the run records the sweep's command and its cell, not the job runner's argv
        command = json.loads((o.run_dir / "manifest.json").read_text())["command"]
        assert command.endswith(f" [cell {o.cell.label}]") and "submitit" not in command
    before = _mtimes(results)
    assert len(before) == 4

    # Second invocation: every cell is skipped before submission, nothing is rewritten.
    out2 = sweep_execution.run_sweep(
        sweep, results_dir=results, executor=executor, quiet=True, **kwargs
    )
    assert [o.status for o in out2] == ["skipped"] * 4
    assert _mtimes(results) == before
    table = pd.read_csv(results / "sweeps/t/cells.csv")
    assert table["status"].tolist() == ["skipped"] * 4

    # The summary over seeds and the pairwise statistics were refreshed from the runs.
    agg = pd.read_csv(results / "tables/sweep_summary.csv")
    assert sorted(agg["model"]) == sorted(MODELS) and set(agg["n"]) == {2}
    for model in MODELS:
        dsc = [
            json.loads((results / f"runs/syn/{model}/fair-e1/seed{s}/metrics.json").read_text())[
                "test"
            ]["dsc"]
            for s in (0, 1)
        ]
        assert agg.loc[agg["model"] == model, "dsc_mean"].item() == pytest.approx(sum(dsc) / 2)
    pairs = pd.read_csv(results / "stats/syn_fair-e1_pairwise.csv")
    n_test = json.loads((results / "runs/syn/malunet/fair-e1/seed0/metrics.json").read_text())[
        "test"
    ]
    assert len(pairs) == 1 and pairs.loc[0, "n"] == n_test["n_images"]

    # Deleting one cell's metrics re-runs that cell only.
    (results / "runs/syn/egeunet/fair-e1/seed1/metrics.json").unlink()
    out3 = sweep_execution.run_sweep(
        sweep, results_dir=results, executor=executor, quiet=True, **kwargs
    )
    assert {o.cell.label: o.status for o in out3} == {
        c.label: ("done" if c.label == "syn/egeunet/fair-e1/seed1" else "skipped") for c in cells
    }
    after = _mtimes(results)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"runs/syn/egeunet/fair-e1/seed1/metrics.json"}


def test_sweep_skip_rerun_and_failure_in_process(tmp_path, data_root):
    """Acceptance flow on submitit's DebugExecutor (cells in this process)."""
    _acceptance(tmp_path, data_root, "debug")


@pytest.mark.slow
def test_sweep_skip_rerun_and_failure_local_executor(tmp_path, data_root):
    """The same flow on submitit's LocalExecutor: every cell a subprocess, 2 at a time;
    the failing cell's error comes back from its pickled traceback. Slow: each subprocess
    imports torch and the registry (about 100 s in all on the shared 2-core machine)."""
    _acceptance(tmp_path, data_root, "local", parallel=2, poll_s=0.2)


# -------------------------------------------------------- in-process (debug) executor


def test_debug_executor_failed_cell_does_not_stop_others(tmp_path, data_root, monkeypatch, capsys):
    import bench.engine.train

    real = bench.engine.train.run_training

    def flaky(cfg, *args, **kwargs):
        if cfg.model == "egeunet":
            raise RuntimeError("boom: simulated crash")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(bench.engine.train, "run_training", flaky)
    path = _write_yaml(tmp_path / "dbg.yaml", _raw(data_root, name="dbg", seeds=[3]))
    results = tmp_path / "results"
    rc = main(["sweep", str(path), "--executor", "debug", "--results", str(results), "--quiet"])
    assert rc == 3  # bench.core.exitcodes.PARTIAL: one cell done, one failed
    out = capsys.readouterr().out
    table = pd.read_csv(results / "sweeps/dbg/cells.csv")
    assert table["status"].tolist() == ["done", "failed"]
    for _, row in table[table["status"] == "failed"].iterrows():
        log = Path(row["path"])
        assert log.is_file() and "boom: simulated crash" in log.read_text()
        assert str(log) in out and "RuntimeError: boom" in row["error"]
    for _, row in table[table["status"] == "done"].iterrows():
        assert json.loads((Path(row["path"]) / "metrics.json").read_text())["status"] == "finished"


def test_plan_states_and_dry_run(tmp_path, data_root, capsys):
    results = tmp_path / "results"
    sweep = _sweep(data_root)
    cells = sweep.cells()
    plan = sweep_planning.plan_cells(cells, results)
    assert [o.status for o in plan] == ["new"] * 4
    # finished with this config / with another config / a checkpoint left by a killed run
    run0, run1, run2 = (o.run_dir for o in plan[:3])
    for rd, digest in ((run0, plan[0].config_hash), (run1, "0123456789abcdef")):
        rd.mkdir(parents=True)
        (rd / "metrics.json").write_text(json.dumps({"status": "finished", "config_hash": digest}))
    (run2 / "checkpoints").mkdir(parents=True)
    (run2 / "checkpoints/last.pt").write_bytes(b"x")
    plan = sweep_planning.plan_cells(cells, results)
    assert [o.status for o in plan] == ["finished", "conflict", "resume", "new"]
    assert "0123456789abcdef" in plan[1].error
    assert [o.status for o in sweep_planning.plan_cells(cells, results, force=True)][:2] == [
        "rerun",
        "rerun",
    ]

    path = _write_yaml(tmp_path / "t.yaml", _raw(data_root))
    assert main(["sweep", str(path), "--dry-run", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "4 cells, 2 to run, 1 finished, 1 in conflict" in out
    assert "syn/malunet/fair-e1/seed0 finished" in " ".join(out.split())
    assert not (results / "sweeps").exists()  # a dry run writes nothing


def test_cell_task_requeue_never_forces():
    task = sweep_execution.CellTask("results", force=True, quiet=True, threads=2)
    cell = sweep_definition.Cell(model="malunet", dataset="syn", data_root="/data", seed=0)
    delayed = task.checkpoint(cell)
    assert delayed.args == (cell,)
    assert delayed.function.force is False and delayed.function.threads == 2


def test_run_cells_argument_errors(tmp_path, data_root):
    cells = _sweep(data_root).cells()
    with pytest.raises(sweep_definition.SweepError, match="--no-wait needs --executor slurm"):
        sweep_execution.run_cells(cells, results_dir=tmp_path, executor="local", wait=False)
    with pytest.raises(sweep_definition.SweepError, match="--parallel must be at least 1"):
        sweep_execution.run_cells(cells, results_dir=tmp_path, parallel=0)
    with pytest.raises(sweep_definition.SweepError, match="unknown executor 'pbs'"):
        sweep_execution.run_cells(cells, results_dir=tmp_path, executor="pbs")


# ---------------------------------------------------------------- fake Slurm cluster


def _fake_slurm(bin_dir: Path, sacct_state: str | None = None) -> Path:
    """``sbatch`` that records its arguments and script and answers job 123; ``srun``
    (submitit looks for it); ``sacct`` reporting ``sacct_state`` for the array's tasks."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    scripts = {
        "sbatch": '#!/bin/sh\necho "$@" >> "{d}/sbatch_calls.txt"\ncp "$1" "{d}/script.sh"\n'
        'echo "Submitted batch job 123"\n',
        "srun": "#!/bin/sh\nexit 0\n",
        "sacct": "#!/bin/sh\necho 'JobID|State|NodeList'\n"
        + (f"echo '123_[0-9]|{sacct_state}|node1'\n" if sacct_state else ""),
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text.replace("{d}", str(bin_dir)))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_slurm_job_array_one_task_per_unfinished_cell(tmp_path, data_root, monkeypatch, capsys):
    import submitit
    from submitit.core.utils import DelayedSubmission

    fake = _fake_slurm(tmp_path / "bin", sacct_state="RUNNING")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(submitit.SlurmJob, "watcher", type(submitit.SlurmJob.watcher)(delay_s=600))
    results = tmp_path / "results"
    slurm = {"partition": "cpu", "cpus_per_task": 4, "account": "proj", "time": 30}
    raw = _raw(data_root, name="cluster", slurm=slurm)
    path = _write_yaml(tmp_path / "cluster.yaml", raw)
    cells = sweep_definition.load_sweep(path).cells()
    # One cell already finished with the same config: it must not be in the array.
    done = sweep_planning.plan_cells(cells, results)[1]
    done.run_dir.mkdir(parents=True)
    (done.run_dir / "metrics.json").write_text(
        json.dumps({"status": "finished", "config_hash": done.config_hash})
    )

    argv = [
        "sweep",
        str(path),
        "--executor",
        "slurm",
        "--results",
        str(results),
        "--no-wait",
        "--partition",
        "gpu",
        "--time",
        "90",
        "--gpus-per-task",
        "1",
        "--mem",
        "16G",
        "--array-parallelism",
        "2",
        "--setup",
        "source .venv/bin/activate",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "submitted Slurm job 123" in out
    calls = (fake / "sbatch_calls.txt").read_text().splitlines()
    assert len(calls) == 1  # one array for the whole sweep
    script = (fake / "script.sh").read_text()
    flags = {ln.split()[1] for ln in script.splitlines() if ln.startswith("#SBATCH")}
    assert "--array=0-2%2" in flags  # 3 unfinished cells, at most 2 at once
    assert {
        "--partition=gpu",
        "--time=90",
        "--gpus-per-task=1",
        "--mem=16G",
        "--cpus-per-task=4",
        "--account=proj",
    } <= flags  # CLI wins, file fills the rest
    assert "source .venv/bin/activate" in script

    table = pd.read_csv(results / "sweeps/cluster/cells.csv", dtype=str).fillna("")
    assert table["status"].tolist() == ["submitted", "skipped", "submitted", "submitted"]
    assert table["job"].tolist() == ["123_0", "", "123_1", "123_2"]
    # Each array task carries exactly its own cell.
    logs = results / "sweeps/cluster/logs"
    for task_id, cell in zip(range(3), [cells[0], cells[2], cells[3]]):
        pkl = logs / f"123_{task_id}" / f"123_{task_id}_submitted.pkl"
        delayed = DelayedSubmission.load(pkl)
        assert delayed.args == (cell,)
        assert (
            isinstance(delayed.function, sweep_execution.CellTask)
            and delayed.function.force is False
        )
    assert table.loc[0, "path"].endswith("123_0/123_0_0_log.err")

    # Submitting again while sacct says the array is running submits nothing new.
    assert main(argv) == 0
    assert len((fake / "sbatch_calls.txt").read_text().splitlines()) == 1
    table = pd.read_csv(results / "sweeps/cluster/cells.csv", dtype=str).fillna("")
    assert table["status"].tolist() == ["running", "skipped", "running", "running"]


def test_slurm_without_srun_is_a_clear_error(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun anywhere
    with pytest.raises(sweep_definition.SweepError, match="--executor slurm: .*srun"):
        sweep_execution.run_cells(_sweep(data_root).cells(), results_dir=tmp_path, executor="slurm")


@pytest.mark.slow
def test_sigterm_cancels_the_local_cells(tmp_path, data_root):
    """``kill`` on a running local sweep stops its cells too (they ignore SIGTERM under
    submitit, so without the sweep's handler they would keep training orphaned), exits
    with the interrupted code and leaves a cell the same command resumes. Slow: a
    subprocess that imports torch and trains."""
    import signal
    import subprocess
    import sys
    import time

    from bench.core import exitcodes, lock

    raw = {"name": "t", "models": ["malunet"], "seeds": [0], "overrides": {**TINY, "epochs": 500},
           "datasets": [{"name": "syn", "root": str(data_root)}]}  # fmt: skip
    path = _write_yaml(tmp_path / "s.yaml", raw)
    results = tmp_path / "results"
    run = results / "runs/syn/malunet/fair-e500/seed0"
    cmd = [
        sys.executable,
        "-m",
        "bench.cli",
        "sweep",
        str(path),
        "--results",
        str(results),
        "--quiet",
    ]
    log = tmp_path / "sweep.out"
    with log.open("w") as out_file:  # a file, not a pipe: orphaned cells would hold a pipe open
        proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stdout=out_file)
    cell_pid = None
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last.pt").is_file():  # the cell trains
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        cell_pid = int(lock.lock_owner(run / "segbench.lock")["pid"])
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == exitcodes.INTERRUPTED, log.read_text()
        assert "interrupted" in log.read_text()
        deadline = time.monotonic() + 30
        while lock._pid_alive(cell_pid):  # the cell was cancelled, not orphaned
            assert time.monotonic() < deadline, f"cell pid {cell_pid} still runs after the sweep"
            time.sleep(0.5)
    finally:
        proc.kill()
        if cell_pid is not None and lock._pid_alive(cell_pid):
            os.kill(cell_pid, signal.SIGKILL)
    assert not (run / "metrics.json").exists()
    plan = sweep_planning.plan_cells(sweep_definition.load_sweep(path).cells(), results)
    assert [o.status for o in plan] == ["resume"]


def test_only_selects_cells_and_keeps_the_others_in_the_status_table(
    tmp_path, data_root, capsys, monkeypatch
):
    cells = _sweep(data_root).cells()
    labels = [c.label for c in sweep_definition.select_cells(cells, ["*/egeunet/*"])]
    assert labels == ["syn/egeunet/fair-e1/seed0", "syn/egeunet/fair-e1/seed1"]
    # a pattern without "/" matches one part of the label: the seed, not "seed1" in "seed10"
    assert [c.label for c in sweep_definition.select_cells(cells, ["seed1", "malunet"])] == [
        "syn/malunet/fair-e1/seed0",
        "syn/malunet/fair-e1/seed1",
        "syn/egeunet/fair-e1/seed1",
    ]
    with pytest.raises(sweep_definition.SweepError, match=r"'unet' matches no cell.*seed0"):
        sweep_definition.select_cells(cells, ["unet"])

    path = _write_yaml(tmp_path / "only.yaml", _raw(data_root, name="only", seeds=[0]))
    results = tmp_path / "results"
    base = ["sweep", str(path), "--executor", "debug", "--results", str(results), "--quiet"]
    assert main([*base, "--only", "seed7"]) == 2  # a typo runs nothing and says so
    assert "'seed7' matches no cell" in capsys.readouterr().err
    assert not (results / "runs").exists()

    monkeypatch.setattr("sys.argv", ["segbench", *base, "--only", "*/egeunet/*"])
    assert main([*base, "--only", "*/egeunet/*"]) == 0
    assert sorted(p.parts[-4] for p in results.glob("runs/*/*/*/seed*/metrics.json")) == ["egeunet"]
    manifest = json.loads(next(results.glob("runs/syn/egeunet/*/seed0/manifest.json")).read_text())
    assert "--only '*/egeunet/*' [cell syn/egeunet/fair-e1/seed0]" in manifest["command"]

    assert main([*base, "--only", "malunet"]) == 0
    table = pd.read_csv(results / "sweeps/only/cells.csv")
    # the second invocation ran malunet only; egeunet's row from the first one is kept
    assert table["cell"].tolist() == ["syn/malunet/fair-e1/seed0", "syn/egeunet/fair-e1/seed0"]
    assert table["status"].tolist() == ["done", "done"]

    capsys.readouterr()

    assert (
        main(["sweep", str(path), "--dry-run", "--results", str(results), "--only", "egeunet"]) == 0
    )
    out = " ".join(capsys.readouterr().out.split())
    assert "1 cells, 0 to run, 1 finished" in out and "malunet" not in out
