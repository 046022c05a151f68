"""Training engine: the authors' recipe, resumable, deterministic on CPU, CPU/GPU/DDP.

One run = one model, one dataset, one experiment (recipe, epochs), one seed, in
``<results>/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/`` (files described in
DEVELOPING.md, "Result files"), so runs of different experiments never collide.
:func:`run_training` is the API the sweep module calls; ``segbench train`` is its
command line.

Data path: the whole training split is read once from the preprocessing cache into a
uint8 tensor (on the GPU when training there), batches are drawn by index and augmented
as batched tensors (``bench.data.augment.augment_batch``), so no JPEG is decoded and no worker
process is needed after the first epoch. Shuffling uses ``DistributedSampler`` (also with
one process) seeded by (seed, epoch), and the augmentation generator is reseeded from
(seed, epoch, rank), so an epoch replays identically after a resume.

Checkpoints: ``checkpoints/last.pt`` after every epoch (model, optimizer, scheduler,
grad scaler, RNG states of every rank, augmentation generator, position in the epoch,
history) and on Ctrl-C / SIGTERM mid-epoch, the one it replaces kept as
``checkpoints/previous.pt``; ``checkpoints/best.pt`` (weights only) whenever the
selection metric improves. All are written to a temp file and renamed. A truncated or
corrupt ``last.pt`` stops the run with one line offering ``previous.pt``
(``use_previous``), never a silent restart.

Ownership: the run folder is locked (``segbench.lock``: pid, host, start time) before
anything is read or written in it, so two processes never train into one folder
(:mod:`bench.core.lock`); the lock is removed when the run ends, however it ends.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.device import resolve_device
from bench.core.io import read_json
from bench.core.lock import LOCK_NAME, DirLock, LockBusy
from bench.engine import distributed as bdist
from bench.engine.checkpoints import load_resume_checkpoint
from bench.engine.config import TrainConfig, split_kwargs
from bench.engine.run_control import _log
from bench.engine.run_record import DatasetChanged, dataset_changes, recorded_dataset
from bench.engine.rundir import _clear_run, _conflict_text, run_dir_for
from bench.engine.trainer import _Trainer


def run_training(
    cfg: TrainConfig,
    results_dir: str | Path = "results",
    resume: bool = True,
    force: bool = False,
    quiet: bool = False,
    wait: float = 0.0,
    use_previous: bool = False,
    command: str | None = None,
) -> Path:
    """Train, select, test and write one run; returns its directory.

    ``command`` is what the run's manifest records as the command that made it (default:
    this process's command line; a sweep cell passes the sweep's command and the cell).

    A run whose ``metrics.json`` says ``finished`` with the same config hash is skipped
    unless ``force``. With ``resume`` an unfinished run continues from ``last.pt`` (with
    ``use_previous`` from ``previous.pt``, the checkpoint before it).
    Raises :class:`bench.core.lock.LockBusy` when another live process owns the run folder
    (after waiting up to ``wait`` seconds), :class:`CheckpointError` for an unreadable
    checkpoint, :class:`CheckpointWriteError` when a checkpoint cannot be written,
    :class:`NonFiniteLossError` when the loss diverges and :class:`TrainingStopped` (a
    ``KeyboardInterrupt``) after saving on Ctrl-C or SIGTERM.
    """
    from models import model_info

    cfg.validate()
    model_info(cfg.model)  # an unknown name fails now, before any data work
    device = str(resolve_device(cfg.device, allow=None))
    dist_info, created_pg = bdist.init_from_env(device)
    if dist_info.enabled and device.startswith("cuda"):
        device = f"cuda:{dist_info.local_rank}"
    run_dir = None
    try:
        run_dir = run_dir_for(cfg, Path(results_dir))
        with _owned(run_dir, wait):
            return _run(cfg, run_dir, device, resume, force, quiet, use_previous, command)
    finally:
        if run_dir is not None and bdist.info().is_main:
            _remove_if_empty(run_dir, Path(results_dir) / "runs")
        bdist.shutdown(created_pg)


class _owned:
    """Rank 0 holds the run folder's lock for the whole run; every rank learns whether it
    got it, so all stop together when another process owns the folder."""

    def __init__(self, run_dir: Path, wait: float) -> None:
        self.lock = DirLock(
            run_dir / LOCK_NAME,
            "run folder",
            wait=wait,
            hint="wait for it to finish, pass --wait to queue behind it, or --results DIR to "
            "train elsewhere",
        )

    def __enter__(self) -> None:
        err: Exception | None = None
        if bdist.info().is_main:
            try:
                self.lock.acquire()
            except (LockBusy, ValueError, OSError) as e:
                err = e
        if not all(bdist.gather_objects(err is None)):
            if err is not None:
                raise err
            raise LockBusy(self.lock.path, None, "run folder", "rank 0 could not lock it")

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _run(
    cfg: TrainConfig,
    run_dir: Path,
    device: str,
    resume: bool,
    force: bool,
    quiet: bool,
    use_previous: bool = False,
    command: str | None = None,
) -> Path:
    d = bdist.info()
    chash = cfg.config_hash
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file() and not force:
        try:
            old = read_json(metrics_path)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{metrics_path}: unreadable ({err}); delete it or pass --force to start over"
            ) from None
        if not isinstance(old, dict):
            raise ValueError(f"{metrics_path}: not a segbench metrics file (expected a mapping)")
        if old.get("status") == "finished":
            if old.get("config_hash") == chash:
                changed = _finished_data_changes(run_dir, cfg)
                if changed:
                    raise DatasetChanged(
                        f"{run_dir} holds a finished run of this configuration trained on "
                        f"other data of the same name ({'; '.join(changed)}); name the new "
                        "data (--dataset NAME), write elsewhere (--results DIR) or pass "
                        "--force to overwrite the run"
                    )
                _log(f"{run_dir}: already finished (config {chash}); --force to re-run", quiet)
                return run_dir
            raise ValueError(
                f"{run_dir} holds a finished run of another configuration of the same "
                f"experiment ({_conflict_text(run_dir, cfg, old.get('config_hash'))}); pass "
                "--force to overwrite it or --results DIR to write elsewhere"
            )
    last_path = run_dir / "checkpoints" / "last.pt"
    ckpt = None
    if resume and not force:
        ckpt = load_resume_checkpoint(last_path, use_previous=use_previous)
    if ckpt is not None:
        if ckpt.get("config_hash") != chash:
            raise ValueError(
                f"{last_path} belongs to another configuration "
                f"({_conflict_text(run_dir, cfg, ckpt.get('config_hash'))}); pass --force or "
                "--no-resume to start over"
            )
    if ckpt is None and d.is_main:
        _clear_run(run_dir)
    bdist.barrier()

    trainer = _Trainer(cfg, run_dir, device, quiet, command=command)
    if ckpt is not None:
        trainer.restore(ckpt)
        del ckpt
    trainer.fit()
    trainer.test()
    bdist.barrier()
    return run_dir


def _finished_data_changes(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """How ``cfg.data`` differs from the data a finished run recorded (``[]``: the same,
    or the run recorded no fingerprint). Indexes the folder and fixes its split, without
    building a cache."""
    from bench.data.cache import data_identity

    old = recorded_dataset(run_dir)
    if not old.get("fingerprint") or not cfg.data:
        return []
    new = data_identity(cfg.data, **split_kwargs(cfg), cache_dir=cfg.cache_dir)
    return dataset_changes(old, {**new, "root": str(cfg.data)})  # (index etc. ignored)


def _remove_if_empty(run_dir: Path, stop: Path) -> None:
    """A run that failed before writing anything (a bad ``--data``) leaves no empty run
    folder behind, nor empty parents up to ``stop``."""
    d = run_dir
    while d != stop and stop in d.parents:
        try:
            d.rmdir()  # only succeeds when empty
        except OSError:
            return
        d = d.parent
