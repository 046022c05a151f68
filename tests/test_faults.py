"""The fault matrix (issue 15): every way a run, an evaluation or a count could end with
exit 0 and a wrong or incomplete number, and what segbench does instead.

Each ``test_fault_*`` function is one row of the "Fault matrix" table in DEVELOPING.md
(checked one to one by :func:`test_fault_matrix_table_matches_this_module`). Rows that
need real processes use them (a lock holder, two trainers, SIGTERM to a trainer, two cache
builders); those that start whole ``segbench`` processes are marked slow (each process
imports torch: seconds on an idle machine, much more on a loaded one).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from bench.cli import build_parser, main
from bench.core import exitcodes
from bench.core.lock import LOCK_NAME, DirLock, LockBusy, _proc_start_ticks
from bench.engine.checkpoints import (
    CheckpointError,
    _read_checkpoint,
    load_resume_checkpoint,
)
from bench.engine.config import TrainConfig
from bench.engine.train import run_training

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

# A process that holds a lock until its stdin closes (or for argv[2] seconds): imports
# only bench.core.lock, so it starts in a fraction of a second.
HOLDER = (
    "import sys, time\n"
    "from bench.core.lock import DirLock\n"
    "lock = DirLock(sys.argv[1]).acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(float(sys.argv[2])) if len(sys.argv) > 2 else sys.stdin.read()\n"
    "lock.release()\n"
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from bench.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("data") / "syn", n=24, size=(48, 64), seed=5)


TRAIN_SETTINGS = {
    "model": "unet",
    "model_kwargs": {"base_width": 4},
    "epochs": 2,
    "image_size": 32,
    "batch_size": 4,
    "threads": 1,
    "device": "cpu",
}


def _cfg(data_root: Path) -> TrainConfig:
    return TrainConfig.from_recipe("fair", data=str(data_root), **TRAIN_SETTINGS)


def _train_argv(data_root: Path, results: Path, *extra: str) -> list[str]:
    """``segbench train`` arguments for the same configuration as :func:`_cfg`."""
    s = TRAIN_SETTINGS
    return [
        "train", "--model", s["model"], "--data", str(data_root), "--epochs", str(s["epochs"]),
        "--batch-size", str(s["batch_size"]), "--threads", "1", "--device", "cpu",
        "--set", f"image_size={s['image_size']}", "--set", "model_kwargs={base_width: 4}",
        "--results", str(results), "--quiet", *extra,
    ]  # fmt: skip


def _run_dir(results: Path) -> Path:
    return results / "runs" / "syn" / "unet" / "fair-e2" / "seed42"


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> Path:
    """An uninterrupted run: what every interrupted-then-resumed run must reproduce."""
    torch.set_num_threads(1)
    return run_training(_cfg(data_root), tmp_path_factory.mktemp("ref"), quiet=True)


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["status"] == mb["status"] == "finished"
    assert ma["test"] == mb["test"]
    assert (ma["best_epoch"], ma["selection"]) == (mb["best_epoch"], mb["selection"])
    cols = ["epoch", "loss", "lr", "val_loss", "val_dsc"]
    la, lb = (pd.read_csv(p / "log.csv") for p in (a, b))
    assert la[cols].equals(lb[cols])


def _finished_copy(reference: Path, results: Path) -> Path:
    """A finished run of the reference configuration under ``results`` (no training)."""
    run = _run_dir(results)
    shutil.copytree(reference, run)
    return run


def _interrupt_at(monkeypatch, signum: int, call: int) -> None:
    """Deliver ``signum`` to this process during the ``call``-th training step."""
    import bench.data.augment

    real = bench.data.augment.augment_batch
    n = {"calls": 0}

    def interrupting(x, y, gen, **kw):
        n["calls"] += 1
        if n["calls"] == call:
            signal.raise_signal(signum)
        return real(x, y, gen, **kw)

    monkeypatch.setattr(bench.data.augment, "augment_batch", interrupting)


def _options(command: str) -> set[str]:
    """Option strings of a subcommand (flag names are being unified: ask, don't assume)."""
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o for a in sub.choices[command]._actions for o in a.option_strings}


def _out(command: str, folder: Path) -> list[str]:
    return ["--results" if "--results" in _options(command) else "--out", str(folder)]


def _start_holder(lock_path: Path, seconds: float | None = None) -> subprocess.Popen:
    args = [sys.executable, "-c", HOLDER, str(lock_path)]
    if seconds is not None:
        args.append(str(seconds))
    proc = subprocess.Popen(args, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _plant_lock(path: Path, **record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"pid": 1, "host": socket.gethostname(), "started": "2024-01-01T00:00:00+0000",
            "command": "segbench train", "token": "planted"}  # fmt: skip
    path.write_text(json.dumps(base | record))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- ownership


def test_fault_concurrent_owner_second_train_exits_busy(data_root, tmp_path, capsys):
    results = tmp_path / "res"
    run = _run_dir(results)
    holder = _start_holder(run / LOCK_NAME)
    try:
        t0 = time.monotonic()
        rc = main(_train_argv(data_root, results))
        took = time.monotonic() - t0
        err = capsys.readouterr().err
        assert rc == exitcodes.BUSY, err
        assert f"pid {holder.pid} on host {socket.gethostname()!r}" in err
        assert "--wait" in err and str(run) in err
        assert took < 20, f"the second process took {took:.0f}s to give up"
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not run.exists() or not (run / LOCK_NAME).exists()


def test_fault_concurrent_owner_wait_queues_behind_it(data_root, reference, tmp_path, caplog):
    results = tmp_path / "res"
    run = _finished_copy(reference, results)
    holder = _start_holder(run / LOCK_NAME, seconds=1.5)
    t0 = time.monotonic()
    assert run_training(_cfg(data_root), results, quiet=True, wait=120) == run
    assert time.monotonic() - t0 >= 1.0 or holder.poll() is not None
    assert holder.wait(timeout=30) == 0
    assert "waiting" in caplog.text and str(holder.pid) in caplog.text
    assert not (run / LOCK_NAME).exists()


def test_fault_stale_lock_of_a_dead_process_is_taken_over(data_root, reference, tmp_path, caplog):
    results = tmp_path / "res"
    run = _finished_copy(reference, results)
    pid = _dead_pid()
    _plant_lock(run / LOCK_NAME, pid=pid)
    assert run_training(_cfg(data_root), results, quiet=True) == run
    assert f"taking over the stale lock {run / LOCK_NAME}" in caplog.text
    assert f"pid {pid} no longer runs on this host" in caplog.text
    assert not (run / LOCK_NAME).exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_fault_stale_lock_of_a_reused_pid_is_taken_over(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = _proc_start_ticks(sleeper.pid)
        assert ticks is not None
        lock_path = tmp_path / LOCK_NAME
        # the pid runs, but it is not the process that wrote the lock (other start time)
        _plant_lock(lock_path, pid=sleeper.pid, start_ticks=ticks - 1)
        with DirLock(lock_path):
            assert json.loads(lock_path.read_text())["pid"] == os.getpid()
        assert "now belongs to another process" in caplog.text
        # the same pid with its real start time is a live owner: never taken
        _plant_lock(lock_path, pid=sleeper.pid, start_ticks=ticks)
        with pytest.raises(LockBusy, match=f"pid {sleeper.pid} on host"):
            DirLock(lock_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_fault_lock_of_another_host_is_never_taken(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    lock_path = tmp_path / "run" / LOCK_NAME
    _plant_lock(lock_path, pid=_dead_pid(), host="node-elsewhere")
    with pytest.raises(LockBusy) as info:
        DirLock(lock_path, wait=0.2, poll=0.05).acquire()
    assert "host 'node-elsewhere'" in str(info.value) and str(lock_path) in str(info.value)
    assert json.loads(lock_path.read_text())["host"] == "node-elsewhere"  # untouched


def test_fault_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch, caplog):
    lock_path = tmp_path / LOCK_NAME
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    # another process of the same allocation (same restart count) is a live owner
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    _plant_lock(lock_path, host="node-7", slurm_job_id="4242", slurm_restart_count=0)
    with pytest.raises(LockBusy, match="Slurm job 4242"):
        DirLock(lock_path).acquire()
    # the requeued incarnation of the job (restart count 1) takes the lock of its past self
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with DirLock(lock_path):
        assert json.loads(lock_path.read_text())["slurm_restart_count"] == 1
    assert "an earlier run of Slurm job 4242, requeued since" in caplog.text


# --------------------------------------------------------------------------- signals


def test_fault_sigterm_mid_epoch_saves_then_resume_is_identical(
    data_root, reference, tmp_path, monkeypatch, capsys
):
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM already has a handler in this process")
    results = tmp_path / "res"
    run = _run_dir(results)
    _interrupt_at(monkeypatch, signal.SIGTERM, call=6)  # epoch 2, step 2 (4 steps an epoch)
    rc = main(_train_argv(data_root, results))
    assert rc == exitcodes.TERMINATED, capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler removed again
    last = _read_checkpoint(run / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step"]) == (1, 2)
    assert _read_checkpoint(run / "checkpoints" / "previous.pt")["epoch"] == 1
    assert not (run / "metrics.json").exists() and not (run / LOCK_NAME).exists()
    monkeypatch.undo()
    run_training(_cfg(data_root), results, quiet=True)
    _assert_same_run(reference, run)


def test_fault_sigterm_under_submitit_is_left_to_submitit():
    from bench.engine.run_control import _StopRequest

    def submitit_bypass(signum, frame):  # what submitit installs in a job
        pass

    prev = signal.signal(signal.SIGTERM, submitit_bypass)
    try:
        with _StopRequest(quiet=True):
            assert signal.getsignal(signal.SIGTERM) is submitit_bypass  # requeue path intact
            assert signal.getsignal(signal.SIGINT) != signal.default_int_handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with _StopRequest(quiet=True) as stop:
            assert signal.getsignal(signal.SIGTERM) == stop._handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, prev)


# --------------------------------------------------------------------------- checkpoints


def test_fault_corrupt_checkpoint_names_it_and_offers_previous(
    data_root, reference, tmp_path, monkeypatch, capsys
):
    results = tmp_path / "res"
    run = _run_dir(results)
    _interrupt_at(monkeypatch, signal.SIGINT, call=6)
    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(data_root), results, quiet=True)
    monkeypatch.undo()
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a copy cut short
    log_before = (run / "log.csv").read_text()
    capsys.readouterr()

    rc = main(_train_argv(data_root, results))
    err = capsys.readouterr().err
    assert rc == exitcodes.USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{last}: truncated or corrupt checkpoint" in lines[0]
    assert f"{run / 'checkpoints' / 'previous.pt'} (end of epoch 1)" in lines[0]
    assert "--resume-previous" in lines[0]
    assert (run / "log.csv").read_text() == log_before and not (run / "metrics.json").exists()

    assert main(_train_argv(data_root, results, "--resume-previous")) == exitcodes.OK
    _assert_same_run(reference, run)  # resumed from the end of epoch 1: same result


def test_fault_corrupt_checkpoint_without_previous_never_restarts(tmp_path):
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir()
    last.write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(CheckpointError) as info:
        load_resume_checkpoint(last)
    msg = str(info.value)
    assert msg.startswith(f"{last}: truncated or corrupt checkpoint") and "\n" not in msg
    assert "no previous checkpoint" in msg and "--force" in msg
    with pytest.raises(CheckpointError, match="previous.pt does not exist"):
        load_resume_checkpoint(last, use_previous=True)
    last.unlink()
    torch.save({"epoch": 3, "step": 0}, last.with_name("previous.pt"))
    with pytest.raises(CheckpointError, match=r"last.pt is missing but .*previous.pt exists"):
        load_resume_checkpoint(last)  # a deleted last.pt is not a fresh start either


def test_fault_failed_checkpoint_write_keeps_previous_files(
    data_root, tmp_path, monkeypatch, capsys
):
    results = tmp_path / "res"
    ckpts = _run_dir(results) / "checkpoints"
    real_save = torch.save
    seen = {"last": 0}
    before: dict[str, bytes] = {}

    def disk_full(obj, fh, *a, **kw):
        if isinstance(obj, dict) and "rng" in obj:  # last.pt (best.pt holds weights only)
            seen["last"] += 1
            if seen["last"] == 2:  # end of epoch 2: the disk is full
                before.update({p.name: p.read_bytes() for p in ckpts.glob("*.pt")})
                fh.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *a, **kw)

    monkeypatch.setattr(torch, "save", disk_full)
    rc = main(_train_argv(data_root, results))
    err = capsys.readouterr().err
    assert rc == exitcodes.IO_ERROR, err  # a full disk is not bad input (issue 28, item 10)
    assert f"could not write checkpoint {ckpts / 'last.pt'}" in err
    assert "No space left on device" in err and "last.pt unchanged" in err
    after = {p.name: p.read_bytes() for p in ckpts.glob("*.pt")}
    assert before and after == before  # last.pt (epoch 1), best.pt: byte for byte
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]  # no temp file left
    assert _read_checkpoint(ckpts / "last.pt")["epoch"] == 1
    assert not (ckpts.parent / LOCK_NAME).exists()


def test_fault_failed_write_names_the_file(tmp_path, monkeypatch):
    from bench.core import io

    target = tmp_path / "metrics.json"
    io.write_json(target, {"a": 1})

    def no_rename(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io.os, "replace", no_rename)
    with pytest.raises(PermissionError, match=f"cannot write {re.escape(str(target))}"):
        io.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("saved_on", ["cuda:1", "cuda:0"])
def test_fault_resume_with_fewer_gpus_restores_the_training_device_rng(monkeypatch, saved_on):
    """No GPU here: torch.cuda is mocked. A cell pinned to one GPU (cuda:0, one visible)
    resumes a checkpoint saved on cuda:1 of a 2-GPU machine (or on cuda:0)."""
    from bench.engine import determinism

    states = {0: torch.tensor([10], dtype=torch.uint8), 1: torch.tensor([11], dtype=torch.uint8)}
    restored: list[tuple[int, int]] = []

    def forbidden(*a, **kw):
        raise AssertionError("all-GPU RNG states must not be used")

    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": states[int(device)].clone())
    monkeypatch.setattr(
        cuda, "set_rng_state", lambda s, device="cuda": restored.append((int(device), int(s[0])))
    )
    monkeypatch.setattr(cuda, "get_rng_state_all", forbidden)
    monkeypatch.setattr(cuda, "set_rng_state_all", forbidden)

    index = int(saved_on.split(":")[1])
    state = determinism._rng_state(saved_on)
    assert state["cuda_device"] == index and torch.equal(state["cuda"], states[index])
    determinism._set_rng_state(state, "cuda:0")  # the only visible GPU
    assert restored == [(0, 10 + index)]
    assert "cuda" not in determinism._rng_state("cpu")
    # a checkpoint written before the fix (one state per GPU of the old machine)
    restored.clear()
    determinism._set_rng_state({**state, "cuda": [states[0], states[1]]}, "cuda:0")
    assert restored == [(0, 10)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        determinism._set_rng_state({**state, "cuda": [states[0]]}, "cuda:3")
    assert "restarts" in str(caught[0].message) and restored == [(0, 10)]


# --------------------------------------------------------------------------- exit codes


def _complexity_argv(models: str, tmp_path: Path) -> list[str]:
    flag = "--input-size" if "--input-size" in _options("complexity") else "--input"
    return ["complexity", "--models", models, flag, "1x3x100x100", "--no-cross-check",
            "--quiet", *_out("complexity", tmp_path)]  # fmt: skip


def _speed_argv(models: str, tmp_path: Path) -> list[str]:
    return ["speed", "--models", models, "--input-size", "100", "--modes", "inference",
            "--batch-sizes", "1", "--min-time", "0.01", "--min-iters", "2", "--warmup", "1",
            "--no-measure-peak", "--no-isolate", "--quiet", *_out("speed", tmp_path)]  # fmt: skip


FULL_REASON = "malunet: H and W must be multiples of 32, got 100x100 (nearest valid: 96x96)"


@pytest.mark.parametrize("argv", [_complexity_argv, _speed_argv], ids=["complexity", "speed"])
def test_fault_all_units_failed_exits_nonzero(argv, tmp_path, capsys):
    rc = main(argv("malunet", tmp_path))
    err = capsys.readouterr().err
    assert rc == exitcodes.FAILED, err
    assert "1 of 1" in err and FULL_REASON in err  # the reason in full, to its last word


def test_fault_partial_failure_exits_partial_and_lists_reasons(tmp_path, capsys):
    rc = main(_complexity_argv("malunet,lraspp_mobilenet_v3_large", tmp_path))
    out, err = capsys.readouterr()
    assert rc == exitcodes.PARTIAL, err
    assert "1 of 2 models failed" in err and FULL_REASON in err
    assert "lraspp_mobilenet_v3_large" in out and "…" not in out + err


def test_fault_exit_code_rule():
    assert exitcodes.outcome_code(3, 0) == exitcodes.OK
    assert exitcodes.outcome_code(0, 2) == exitcodes.FAILED
    assert exitcodes.outcome_code(1, 2) == exitcodes.PARTIAL
    assert len(set(exitcodes.NAMES)) == len(exitcodes.NAMES) == 8
    long = "x" * 500 + " end"
    assert exitcodes.failure_lines([("m", long)]) == [f"m: {long}"]


# --------------------------------------------------------------------------- data cache


def test_fault_dataset_changed_since_its_cache_was_built(tmp_path):
    from PIL import Image

    from bench.data.cache import prepare_data
    from bench.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "d", n=8, size=(40, 40), seed=1)
    kw = dict(size=32, cache_dir=tmp_path / "cache", workers=1, progress=False)
    first = prepare_data(root, **kw)
    sid = first.split_ids["train"][0]
    sample = first.index.by_id()[sid]
    old = np.asarray(Image.open(sample.image))
    Image.fromarray(255 - old).save(sample.image, quality=95)  # pixels changed, same name
    st = sample.image.stat()
    os.utime(sample.image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = prepare_data(root, **kw)
    assert second.cache_path != first.cache_path  # the stale cache is not used
    assert second.fingerprint != first.fingerprint  # and runs record the change
    assert not np.array_equal(second.images("train")[0], first.images("train")[0])


def test_fault_concurrent_cache_builders_build_once(tmp_path, monkeypatch):
    """Two builders in one process (threads; the lock sees its own pid as alive)."""
    from bench.data import cache
    from bench.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "d", n=8, size=(40, 40), seed=2)
    real = cache._build_cache
    builds = []

    def slow_build(*a, **kw):
        builds.append(threading.current_thread().name)
        time.sleep(1.0)  # a window in which the other thread asks for the same cache
        return real(*a, **kw)

    monkeypatch.setattr(cache, "_build_cache", slow_build)
    got: dict[str, object] = {}

    def prep(tag: str) -> None:
        got[tag] = cache.prepare_data(
            root, size=32, cache_dir=tmp_path / "cache", workers=1, progress=False
        )

    threads = [threading.Thread(target=prep, args=(t,), name=t) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(got) == 2 and len(builds) == 1
    a, b = got["a"], got["b"]
    assert a.cache_path == b.cache_path
    assert np.array_equal(a.images("train"), b.images("train"))
    # one cache folder (the split file sits beside it in splits/), no half-built leftovers
    built = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != "splits")
    assert built == [a.cache_path.name]


# --------------------------------------------------------------------------- counting


class _Sorts(nn.Module):
    """A conv, then an op the counter has no rule for (aten.sort)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.sort(y, dim=-1).values


def test_fault_uncounted_op_makes_the_row_incomplete_and_a_lower_bound(tmp_path, monkeypatch):
    import types

    import models
    from bench.analysis.report.load import load_results
    from bench.analysis.report.summaries import summary_table
    from bench.analysis.report.tables import _efficiency_cols, render
    from bench.cost.complexity import display_table, run_complexity

    monkeypatch.setattr(models, "create_model", lambda name, **kw: _Sorts())
    monkeypatch.setattr(models, "model_info", lambda name: types.SimpleNamespace(reported={}))
    df = run_complexity(
        ["toy_sorts"], (1, 3, 8, 8), tmp_path / "complexity", cross_check=False, progress=False
    )
    row = df.iloc[0]
    assert row["status"] == "incomplete"
    assert row["macs"] == 8 * 8 * 2 * 3 * 9  # the conv, counted; the sort is not
    assert "aten.sort" in row["unsupported_ops"] and "lower bound" in row["reason"]
    assert display_table(df).loc[0, "segbench MACs"] == f">= {8 * 8 * 2 * 3 * 9:,}"
    _, md = render(summary_table(load_results(tmp_path)), _efficiency_cols(None))
    assert "| >= 0.000 " in md  # the report's MAC column marks it as a lower bound


# TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128), batch 1, L=16 tokens,
# MACs by hand:
#   input projection  16 tokens x 64 x (3 x 64)          = 196,608
#   Q K^T             4 heads x 16 x 16 x (64 / 4)       =  16,384
#   A V               4 heads x 16 x 16 x (64 / 4)       =  16,384
#   output projection 16 x 64 x 64                       =  65,536
#   feed-forward      16 x 64 x 128 + 16 x 128 x 64      = 262,144
#   total                                                = 557,056
ENCODER_MACS = 557_056


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
@pytest.mark.parametrize("train", [False, True], ids=["eval_no_grad", "train"])
def test_fault_attention_fast_path_is_counted_exactly(batch_first, train):
    from bench.cost.flops import analyze

    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=batch_first)
    c = analyze(layer, (1, 16, 64) if batch_first else (16, 1, 64), train=train)
    assert c.unsupported_ops == {}
    assert c.macs == ENCODER_MACS
    if batch_first and not train:  # eval + no_grad: nn.MultiheadAttention's fused kernel ran
        assert "aten._native_multi_head_attention" in c.macs_by_op


def test_fault_attention_kernel_rules_read_the_right_arguments():
    from bench.cost.flops import _RULES

    aten = torch.ops.aten
    b, length, heads, e = 2, 16, 4, 8
    q = torch.empty(b, length, heads, e, device="meta")
    bias = torch.empty(b, heads, length, length, device="meta")
    offsets = torch.empty(b + 1, dtype=torch.int32, device="meta")
    # aten::_efficient_attention_forward(query, key, value, bias, cu_seqlens_q, ...)
    schema = aten._efficient_attention_forward.default._schema
    assert [a.name for a in schema.arguments[3:5]] == ["bias", "cu_seqlens_q"]
    rule = _RULES[aten._efficient_attention_forward]
    plain = rule((q, q, q, None, None, None, None, None, 0.0, 0), {}, None)
    biased = rule((q, q, q, bias, None, None, None, None, 0.0, 0), {}, None)
    # (B H L S) x (E + Ev) MACs, a bias adds one FLOP per score
    assert plain[0] == biased[0] == b * heads * length * length * (e + e)
    assert biased[1] - plain[1] == b * heads * length * length
    assert rule((q, q, q, None, offsets, offsets, 16, 16, 0.0, 0), {}, None) is None  # varlen


# --------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_fault_concurrent_train_processes_second_exits_busy(data_root, tmp_path):
    """Acceptance: two `segbench train` on one configuration."""
    results = tmp_path / "res"
    run = _run_dir(results)
    cmd = [sys.executable, "-m", "bench.cli", *_train_argv(data_root, results)]
    first = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / LOCK_NAME).exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first process never took the lock"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # keep it mid-run while the second one tries
        t0 = time.monotonic()
        second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - t0
        assert second.returncode == exitcodes.BUSY, second.stderr
        assert f"pid {first.pid} on host {socket.gethostname()!r}" in second.stderr
        # It did not wait for the (stopped) owner: it gave up once started. Starting a
        # process that imports torch takes seconds here, minutes on a loaded machine.
        assert took < 120, f"the second process took {took:.0f}s"
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    names = sorted(p.name for p in run.iterdir())
    assert LOCK_NAME not in names and not [n for n in names if n.startswith(".")]
    assert len([n for n in names if n.startswith("events.out.tfevents")]) == 1
    assert len(pd.read_csv(run / "log.csv")) == TRAIN_SETTINGS["epochs"]
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_fault_sigterm_to_a_real_process_then_resume_is_identical(data_root, reference, tmp_path):
    results = tmp_path / "res"
    run = _run_dir(results)
    cmd = [sys.executable, "-m", "bench.cli", *_train_argv(data_root, results)]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "log.csv").exists():  # epoch 1 done: now in epoch 2
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "training did not reach epoch 2"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == exitcodes.TERMINATED, proc.stderr.read()
    last = _read_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["step"] >= 1  # mid-epoch 2
    assert not (run / LOCK_NAME).exists()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    _assert_same_run(reference, run)


BUILDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from bench.data import cache\n"
    "real = cache._build_cache\n"
    "def slow(*a, **kw):\n"
    "    with open(sys.argv[3], 'a') as fh: fh.write('built\\n')\n"
    "    time.sleep(2.0)\n"
    "    return real(*a, **kw)\n"
    "cache._build_cache = slow\n"
    "Path(sys.argv[4]).touch()\n"
    "while not Path(sys.argv[5]).exists(): time.sleep(0.01)\n"
    "p = cache.prepare_data(sys.argv[1], size=32, cache_dir=sys.argv[2], workers=1, progress=False)\n"
    "print(p.cache_path, int(p.images('train').sum()))\n"
)


@pytest.mark.slow
def test_fault_two_processes_build_one_cache_once(tmp_path):
    from bench.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path / "d", n=8, size=(40, 40), seed=4)
    log, go = tmp_path / "builds.txt", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                BUILDER,
                str(root),
                str(tmp_path / "cache"),
                str(log),
                str(tmp_path / f"ready{i}"),
                str(go),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.touch()  # both ask for the cache at the same moment
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    assert log.read_text().splitlines() == ["built"]  # one build, the other waited
    assert len({o for o, _ in outs}) == 1  # same cache, same pixels
    assert len(list((tmp_path / "cache").iterdir())) == 1


# --------------------------------------------------------------------------- the table


def test_fault_matrix_table_matches_this_module():
    text = (ROOT / "DEVELOPING.md").read_text(encoding="utf-8")
    section = text.split("## Fault matrix", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`tests/(test_\w+\.py)::(test_\w+)`", section)
    here = {n for n in globals() if n.startswith("test_fault_")}
    ours = [t for f, t in named if f == "test_faults.py"]
    assert sorted(ours) == sorted(here - {"test_fault_matrix_table_matches_this_module"})
    assert len(ours) == len(set(ours)), "a test is listed twice"
    for f, _ in named:
        assert (ROOT / "tests" / f).is_file() or f == "test_evaluate_run.py", f
