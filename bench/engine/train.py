"""Training engine: the authors' recipe, resumable, deterministic, CPU/GPU/DDP.

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
history) and on Ctrl-C mid-epoch; ``checkpoints/best.pt`` (weights only) whenever the
selection metric improves. Both are written to a temp file and renamed.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.device import resolve_device
from bench.core.io import read_json
from bench.engine import distributed as bdist
from bench.engine.checkpoints import _load_checkpoint
from bench.engine.config import TrainConfig
from bench.engine.rundir import _clear_run, _conflict_text, run_dir_for
from bench.engine.trainer import _log, _Trainer


def run_training(
    cfg: TrainConfig,
    results_dir: str | Path = "results",
    resume: bool = True,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Train, select, test and write one run; returns its directory.

    A run whose ``metrics.json`` says ``finished`` with the same config hash is skipped
    unless ``force``. With ``resume`` an unfinished run continues from ``last.pt``.
    Raises :class:`NonFiniteLossError` when the loss diverges and ``KeyboardInterrupt``
    after saving on Ctrl-C.
    """
    from models import model_info

    cfg.validate()
    model_info(cfg.model)  # an unknown name fails now, before any data work
    device = str(resolve_device(cfg.device, allow=None))
    dist_info, created_pg = bdist.init_from_env(device)
    if dist_info.enabled and device.startswith("cuda"):
        device = f"cuda:{dist_info.local_rank}"
    try:
        return _run(cfg, Path(results_dir), device, resume, force, quiet)
    finally:
        bdist.shutdown(created_pg)


def _run(
    cfg: TrainConfig, results: Path, device: str, resume: bool, force: bool, quiet: bool
) -> Path:
    d = bdist.info()
    run_dir = run_dir_for(cfg, results)
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
                _log(f"{run_dir}: already finished (config {chash}); --force to re-run", quiet)
                return run_dir
            raise ValueError(
                f"{run_dir} holds a finished run of another configuration of the same "
                f"experiment ({_conflict_text(run_dir, cfg, old.get('config_hash'))}); pass "
                "--force to overwrite it or --results DIR to write elsewhere"
            )
    last_path = run_dir / "checkpoints" / "last.pt"
    ckpt = None
    if resume and not force and last_path.is_file():
        ckpt = _load_checkpoint(last_path)
        if ckpt.get("config_hash") != chash:
            raise ValueError(
                f"{last_path} belongs to another configuration "
                f"({_conflict_text(run_dir, cfg, ckpt.get('config_hash'))}); pass --force or "
                "--no-resume to start over"
            )
    if ckpt is None and d.is_main:
        _clear_run(run_dir)
    bdist.barrier()

    trainer = _Trainer(cfg, run_dir, device, quiet)
    if ckpt is not None:
        trainer.restore(ckpt)
        del ckpt
    trainer.fit()
    trainer.test()
    bdist.barrier()
    return run_dir
