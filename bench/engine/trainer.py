"""The training loop of one run: data, model, optimizer, epochs, validation and model selection, checkpoints, final test scoring."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from bench.core.io import write_csv, write_json
from bench.core.optim import adamw, adapt_optimizer_state, aliased_parameter_names
from bench.core.precision import (
    autocast_context,
    deterministic_mode,
    effective_channels_last,
    memory_format,
)
from bench.core.progress import progress_bar
from bench.engine import distributed as bdist
from bench.engine.amp import _effective_amp
from bench.engine.checkpoints import CHECKPOINT_FORMAT, _load_checkpoint, _save_checkpoint
from bench.engine.config import TrainConfig, fixed_rotation_angle, split_kwargs
from bench.engine.determinism import (
    _configure_backends,
    _epoch_seed,
    _loaded,
    _rng_state,
    _seed_everything,
    _set_rng_state,
)
from bench.engine.evaluate import EvalSettings, evaluate_arrays, evaluate_split, to_nchw
from bench.engine.losses import build_loss
from bench.engine.run_control import (
    NonFiniteLossError,
    TrainingStopped,
    _AuxForward,
    _batches,
    _check_every,
    _log,
    _StopNow,
    _StopRequest,
    _summary_line,
)
from bench.engine.run_record import (
    DatasetChanged,
    dataset_changes,
    dataset_identity,
    final_metrics,
    recorded_dataset,
    start_manifest,
)

log = logging.getLogger(__name__)


class _Trainer:
    """One run's state and steps; :func:`_run` decides whether and from where to run it."""

    def __init__(
        self, cfg: TrainConfig, run_dir: Path, device: str, quiet: bool, command: str | None = None
    ) -> None:
        from models import create_model, model_info

        self.cfg, self.run_dir, self.device, self.quiet = cfg, run_dir, device, quiet
        self.command = command
        self.d = d = bdist.info()
        self.chash = cfg.config_hash
        self.last_path = run_dir / "checkpoints" / "last.pt"
        self.best_path = run_dir / "checkpoints" / "best.pt"

        # determinism, threads, precision
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif device == "cpu" and torch.get_num_threads() > 1 and d.is_main and _loaded():
            warnings.warn(
                f"CPU load {os.getloadavg()[0]:.1f} exceeds the {os.cpu_count()} cores; "
                f"{torch.get_num_threads()} torch threads will contend (try --threads 1)",
                stacklevel=3,
            )
        self.deterministic = deterministic_mode(cfg.deterministic, device)
        _configure_backends(self.deterministic, device)
        _seed_everything(cfg.seed + d.rank)
        self.amp, self.amp_note = _effective_amp(cfg, device)
        if self.amp_note:
            warnings.warn(f"{cfg.model}: {self.amp_note}", stacklevel=3)
        # how the final test scores (validation: the same, without HD95)
        self.eval_settings = EvalSettings(
            device=device,
            batch_size=cfg.batch_size,
            scaling=cfg.input_scaling,
            amp=self.amp,
            threshold=cfg.threshold,
            hd95_convention=cfg.hd95,
        )
        self._load_data()
        from bench.core.env import device_slug

        self.host = device_slug(device)

        # model, loss, optimiser
        self.info = model_info(cfg.model)
        self.model_kwargs = cfg.effective_model_kwargs
        try:
            model = create_model(cfg.model, **self.model_kwargs).to(device)
        except TypeError as err:  # a builder argument the model does not take
            raise ValueError(f"model kwargs {self.model_kwargs}: {err}") from None
        self.channels_last = effective_channels_last(cfg.channels_last, device)
        self.mem_format = memory_format(self.channels_last)
        self.model = model.to(memory_format=self.mem_format)
        weights = (cfg.bce_weight, cfg.dice_weight, cfg.dice_smooth)
        self.loss_fn = build_loss(*weights, self.info.loss_weights, form=cfg.loss)
        self.main_loss = build_loss(*weights, form=cfg.loss)  # validation: main output only
        # parameters sharing storage (MALUNet's tied memory) never in one foreach launch
        self.tied = aliased_parameter_names(model)
        self.optimizer = adamw(
            model,
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=cfg.effective_t_max, eta_min=cfg.eta_min
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.net: nn.Module = _AuxForward(model, self.info.has_aux)
        if d.enabled:
            ids = [torch.device(device).index] if device.startswith("cuda") else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

        # progress through the run
        self.epoch, self.step = 0, 0
        self.check_every = _check_every(device, d.enabled)
        self.partial: dict[str, Any] = {"loss_sum": 0.0, "seen": 0, "time": 0.0}
        self.best: dict[str, Any] = {"value": None, "epoch": None}
        self.history: list[dict[str, Any]] = []
        self.gen = torch.Generator()  # augmentation draws, on CPU (see bench.data.augment)
        # rotation="fixed": one angle for the whole run, as the authors' transform
        self.fixed_angle = fixed_rotation_angle(cfg.seed) if cfg.rotation == "fixed" else None
        self.sampler = torch.utils.data.DistributedSampler(
            range(self.n_train),
            num_replicas=d.world_size,
            rank=d.rank,
            shuffle=True,
            seed=cfg.seed,
        )

    def _load_data(self) -> None:
        from bench.data.cache import prepare_data

        cfg, d = self.cfg, self.d

        def prep() -> Any:
            return prepare_data(
                cfg.data,
                size=cfg.image_size,
                **split_kwargs(cfg),
                cache_dir=cfg.cache_dir,
                progress=not self.quiet and d.is_main,
                binarize=cfg.binarize,
            )

        if d.is_main:  # rank 0 builds the cache, the others then find it
            self.prepared = prep()
        bdist.barrier(slow=True)  # may take long: not on the NCCL group's short timeout
        if not d.is_main:
            self.prepared = prep()
        p = self.prepared
        from bench.data.splits import evaluation_only

        if evaluation_only(p.index):
            raise ValueError(
                f"{cfg.data}: holds only the official {' + '.join(p.layout.official_splits)} "
                "part(s) of a dataset, no training part: it can be scored (segbench evaluate "
                f"--run RUN_DIR --data {cfg.data} --split all), not trained on"
            )
        self.train_x = torch.cat([to_nchw(p.images(s)) for s in cfg.train_splits])
        self.train_y = torch.cat([to_nchw(p.masks(s)) for s in cfg.train_splits])
        self.n_train = self.train_x.shape[0]
        if self.n_train == 0:
            raise ValueError(
                f"{cfg.data}: the training split ({'+'.join(cfg.train_splits)}) is empty"
            )
        if torch.device(self.device).type == "cuda":  # the uint8 set fits easily: no loader
            self.train_x, self.train_y = self.train_x.to(self.device), self.train_y.to(self.device)
        if not p.split_ids.get(cfg.eval_split):  # fail now, not after every epoch
            raise ValueError(
                f"{cfg.data}: the {cfg.eval_split} split (eval_split) is empty "
                f"({', '.join(f'{k} {len(v)}' for k, v in p.split_ids.items())}); set "
                "test_fraction > 0 or use a split file with a test part"
            )
        self.sel_split = None if cfg.select_split == "none" else cfg.select_split
        self.sel_data = None
        if self.sel_split:
            if not p.split_ids.get(self.sel_split):
                raise ValueError(
                    f"select_split={self.sel_split!r} but the {self.sel_split} split of "
                    f"{cfg.data} is empty (set val_fraction > 0 or select_split=none)"
                )
            s = self.sel_split
            self.sel_data = (to_nchw(p.images(s)), to_nchw(p.masks(s)), list(p.split_ids[s]))
        if cfg.batch_size % d.world_size:
            raise ValueError(
                f"batch_size={cfg.batch_size} (global) is not divisible by {d.world_size} processes"
            )
        self.per_rank_batch = cfg.batch_size // d.world_size

    # ---------------------------------------------------------------- checkpoints

    def restore(self, ckpt: dict[str, Any]) -> None:
        changed = dataset_changes(
            recorded_dataset(self.run_dir, ckpt), dataset_identity(self.prepared)
        )
        if changed:
            raise DatasetChanged(
                f"{self.run_dir}: the dataset changed since this run started "
                f"({'; '.join(changed)}): resuming would go on training on other images. "
                "Restore the data, or train the new data as another dataset (--dataset NAME "
                "or --results DIR), or pass --force to start this run over"
            )
        threads = ckpt.get("threads")
        if threads and threads != torch.get_num_threads() and self.device == "cpu":
            warnings.warn(
                f"{self.run_dir}: saved with {threads} torch threads, resumed with "
                f"{torch.get_num_threads()}: CPU results may differ in the last digits from "
                f"an uninterrupted run (pass --threads {threads} to match)",
                stacklevel=3,
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(
            adapt_optimizer_state(ckpt["optimizer"], self.optimizer, self.model)
        )
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.partial, self.best, self.history = ckpt["partial"], ckpt["best"], ckpt["history"]
        if len(ckpt["rng"]) == self.d.world_size:
            _set_rng_state(ckpt["rng"][self.d.rank], self.device)
            self.gen.set_state(ckpt["gen"][self.d.rank])
        else:
            warnings.warn(
                f"{self.last_path}: saved by {len(ckpt['rng'])} processes, resumed by "
                f"{self.d.world_size}: RNG streams restart",
                stacklevel=3,
            )
        at = f"epoch {self.epoch + 1}" + (f", step {self.step}" if self.step else "")
        _log(f"resuming {self.run_dir} at {at}", self.quiet)

    def save_last(self) -> None:
        """``last.pt`` at the current position (every rank calls: RNG states are gathered)."""
        rng = bdist.gather_objects(_rng_state(self.device))
        gens = bdist.gather_objects(self.gen.get_state())
        if self.d.is_main:
            _save_checkpoint(
                self.last_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "config_hash": self.chash,
                    **self._checkpoint_config(),
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "epoch": self.epoch,
                    "step": self.step,
                    "partial": self.partial,
                    "best": self.best,
                    "history": self.history,
                    "rng": rng,
                    "gen": gens,
                    "world_size": self.d.world_size,
                    "dataset": dataset_identity(self.prepared),
                    # CPU results are bit-reproducible at one thread count only
                    "threads": torch.get_num_threads(),
                },
                keep_previous=True,
            )

    def _checkpoint_config(self) -> dict[str, Any]:
        """What a checkpoint carries so it can be scored on its own (``segbench evaluate
        --checkpoint``): the run's configuration and the precision it really used."""
        return {
            "config": {**self.cfg.to_dict(), "dataset": self.cfg.dataset_name},
            "precision": self.amp or "fp32",
        }

    def _save_best(self) -> None:
        if self.d.is_main:
            _save_checkpoint(
                self.best_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "config_hash": self.chash,
                    **self._checkpoint_config(),
                    "model": self.model.state_dict(),
                    "epoch": self.best["epoch"],
                    "select": f"{self.cfg.select_metric}@{self.sel_split}",
                    "value": self.best["value"],
                    "dataset": dataset_identity(self.prepared),
                },
            )

    # ---------------------------------------------------------------- loop

    def fit(self) -> None:
        cfg, d = self.cfg, self.d
        writer = None
        if d.is_main:
            self._write_start_files()
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=self.epoch + 1)
        self.t_start = time.perf_counter()
        with _StopRequest(self.quiet) as stop:
            while self.epoch < cfg.epochs:
                row = self._train_epoch(stop)
                self._check_weights()
                self.scheduler.step()
                improved = self._validate(row)
                self.history.append(row)
                self.epoch, self.step = self.epoch + 1, 0
                self.partial = {"loss_sum": 0.0, "seen": 0, "time": 0.0}
                if improved:
                    self._save_best()
                self.save_last()
                if writer:
                    write_csv(self.run_dir / "log.csv", pd.DataFrame(self.history))
                    for k, v in row.items():
                        if k not in ("epoch", "best", "host") and v is not None:
                            writer.add_scalar(k, v, row["epoch"])
                    writer.flush()
                _log(_summary_line(row, cfg.epochs, self.sel_split), self.quiet)
        if writer:
            writer.close()

    def _train_epoch(self, stop: _StopRequest) -> dict[str, Any]:
        from bench.data.augment import training_batch

        cfg, d, device = self.cfg, self.d, self.device
        dev = torch.device(device)
        self.sampler.set_epoch(self.epoch)
        # The epoch's order as one index tensor, moved to the data's device once per
        # epoch: a Python list would be copied to the GPU (and synced) every step.
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.train_x.device)
        if self.step == 0:  # a fresh epoch (else: resuming inside it, states restored)
            self.gen.manual_seed(_epoch_seed(cfg.seed, self.epoch, d.rank))
        lr = self.optimizer.param_groups[0]["lr"]
        self.net.train()
        steps = math.ceil(len(order) / self.per_rank_batch)
        check_every = self.check_every
        bar = None
        if not self.quiet and d.is_main:
            bar = progress_bar(
                total=steps,
                initial=self.step,
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                unit="batch",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        part = self.partial
        # The loss sum stays on the device (float64, the same arithmetic as the Python
        # float it replaces, so CPU logs are unchanged); read back only at checks.
        loss_sum = torch.tensor(part["loss_sum"], dtype=torch.float64, device=dev)
        last_check = self.step
        t0 = time.perf_counter() - part["time"]
        try:
            for step, idx in enumerate(_batches(order, self.per_rank_batch)):
                if step < self.step:
                    continue
                n = int(idx.shape[0])
                x, y = self.train_x.index_select(0, idx), self.train_y.index_select(0, idx)
                if x.device != dev:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                x, y = training_batch(
                    x,
                    y,
                    self.gen,
                    scaling=cfg.input_scaling,
                    augment=cfg.augment,
                    scale_first=cfg.scale_before_augment,
                    fixed_angle=self.fixed_angle,
                )
                x = x.contiguous(memory_format=self.mem_format)
                with autocast_context(device, self.amp):
                    logits, aux = self.net(x)
                    loss = self.loss_fn(logits, y.float(), aux)
                loss_sum += loss.detach().double() * n
                part["seen"] += n
                check = (step + 1 - last_check) >= check_every or step == steps - 1
                flags = None
                if check:  # one host read (and under DDP one all-reduce) per check
                    last_check = step + 1
                    flags = torch.stack(
                        [
                            torch.isfinite(loss_sum).double(),
                            torch.tensor(float(stop.requested), dtype=torch.float64, device=dev),
                        ]
                    )
                    if d.enabled:  # every rank stops together (a NaN or Ctrl-C on any rank)
                        flags = bdist.all_reduce_sum(flags) / d.world_size
                    flags = flags.tolist()
                    if flags[0] < 1:
                        self._fail(step, float(loss.detach()), check_every)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if bar:
                    if check:
                        part["loss_sum"] = float(loss_sum)
                        rate = part["seen"] * d.world_size / max(time.perf_counter() - t0, 1e-9)
                        bar.set_postfix(
                            loss=f"{part['loss_sum'] / part['seen']:.4f}",
                            img_s=f"{rate:.1f}",
                            refresh=False,
                        )
                    bar.update()
                if flags is not None and flags[1] > 0:  # Ctrl-C: save this position, then stop
                    part["loss_sum"] = float(loss_sum)
                    part["time"] = time.perf_counter() - t0
                    self.step = step + 1
                    self.save_last()
                    _log(
                        f"saved {self.last_path} (epoch {self.epoch + 1}, step {self.step}); "
                        "run the same command again to resume",
                        self.quiet,
                    )
                    raise TrainingStopped(stop.signum or signal.SIGINT, self.last_path)
        finally:
            if bar:
                bar.close()
        part["loss_sum"] = float(loss_sum)
        train_time = time.perf_counter() - t0
        total = bdist.all_reduce_sum(
            torch.tensor([part["loss_sum"], float(part["seen"])], dtype=torch.float64)
        )
        return {
            "epoch": self.epoch + 1,
            "loss": float(total[0] / total[1]),
            "lr": lr,
            # the machine this epoch ran on: a run resumed elsewhere shows it per epoch
            "host": self.host,
            "epoch_time_s": train_time,
            "images_per_s": self.n_train / train_time,
        }

    def _validate(self, row: dict[str, Any]) -> bool:
        """Score the selection split when due; returns whether this epoch is the new best."""
        cfg, split, epoch = self.cfg, self.sel_split, self.epoch + 1
        if split is None:  # no selection: the last epoch is the best
            self.best = {"value": None, "epoch": epoch}
            row["best"] = True
            return True
        row["best"] = False
        if epoch % cfg.val_every and epoch != cfg.epochs:
            return False
        t0 = time.perf_counter()
        bdist.broadcast_buffers(self.model)
        res = evaluate_arrays(
            self.model,
            *self.sel_data,
            self.eval_settings.replace(compute_hd95=False),
            loss_fn=self.main_loss,
        )
        row.update(
            {
                f"{split}_loss": res.loss,
                f"{split}_dsc": res.metrics["dsc"],
                f"{split}_miou": res.metrics["miou"],
                f"{split}_dice_mean": res.metrics["dice_mean"],
                "val_time_s": time.perf_counter() - t0,
            }
        )
        if not math.isfinite(res.loss):
            self._fail_run(f"non-finite {split} loss ({res.loss}) at epoch {epoch}")
        value = res.loss if cfg.select_metric == "loss" else res.metrics["dsc"]
        prev = self.best["value"]
        better = prev is None or (value < prev if cfg.select_metric == "loss" else value > prev)
        if better:
            self.best = {"value": float(value), "epoch": epoch}
        row["best"] = better
        return better

    def _fail(self, step: int, value: float, check_every: int = 1) -> None:
        where = f"step {step + 1}"
        if check_every > 1:
            where += f" (checked every {check_every} steps: the first bad step is at most this one)"
        self._fail_run(f"non-finite loss ({value}) at epoch {self.epoch + 1}, {where}")

    def _check_weights(self) -> None:
        """Non-finite weights or buffers after an epoch end the run (a NaN can reach the
        weights with a finite loss, e.g. through an inf gradient)."""
        bad = [
            n
            for n, t in (*self.model.named_parameters(), *self.model.named_buffers())
            if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            self._fail_run(
                f"non-finite weights ({', '.join(bad[:3])}{more}) after epoch {self.epoch + 1}"
            )

    def _fail_run(self, what: str) -> None:
        """End the run as failed: ``metrics.json`` says so and why; the checkpoints on
        disk were all written from finite weights (and a finite validation loss where one
        was computed), since every epoch is checked before it is saved."""
        cfg = self.cfg
        kept = (
            f"last good checkpoint: {self.last_path} (end of epoch {self.epoch})"
            if self.last_path.is_file()
            else "no checkpoint was written yet"
        )
        msg = (
            f"{what} of {cfg.model}: training stopped; {kept}. Try a lower learning rate, "
            "amp off, or check the data."
        )
        if self.d.is_main:
            run = {"model": cfg.model, "dataset": cfg.dataset_name, "seed": cfg.seed}
            run.update(recipe=cfg.recipe, epochs=cfg.epochs, config_hash=self.chash)
            write_json(self.run_dir / "metrics.json", {**run, "status": "failed", "reason": msg})
        raise NonFiniteLossError(msg)

    # ---------------------------------------------------------------- final test

    def test(self) -> None:
        """Score the selected weights on the evaluation split and write the results."""
        cfg = self.cfg
        if self.best_path.is_file():
            self.model.load_state_dict(_load_checkpoint(self.best_path)["model"])
        bdist.broadcast_buffers(self.model)
        with _StopNow(self.last_path):
            res = self._score_test()
        if self.d.is_main:
            self._write_final(res, time.perf_counter() - self.t_start)
            m = res.metrics
            _log(
                f"{cfg.model} {cfg.eval_split}: DSC {m['dsc']:.4f}  mIoU {m['miou']:.4f}  "
                f"Dice/img {m['dice_mean']:.4f}  HD95 {m['hd95_mean']:.2f}px  -> {self.run_dir}",
                self.quiet,
            )

    def _score_test(self) -> Any:
        cfg = self.cfg
        return evaluate_split(
            self.model,
            self.prepared,
            cfg.eval_split,
            self.eval_settings,
            original_resolution=cfg.original_resolution,
            progress=not self.quiet,
            desc=f"{cfg.model} {cfg.eval_split}",
        )

    # ---------------------------------------------------------------- result files

    def _write_start_files(self) -> None:
        cfg = self.cfg
        write_json(
            self.run_dir / "config.json",
            {**cfg.to_dict(), "dataset": cfg.dataset_name, "config_hash": self.chash},
        )
        write_json(self.run_dir / "manifest.json", start_manifest(self))
        if self.history:  # a resume: the log matches the checkpoint (a write may have failed)
            write_csv(self.run_dir / "log.csv", pd.DataFrame(self.history))

    def _write_final(self, res: Any, wall: float) -> None:
        write_csv(self.run_dir / "per_image.csv", res.per_image)
        if res.original_per_image is not None:
            write_csv(self.run_dir / "per_image_original.csv", res.original_per_image)
        write_json(self.run_dir / "metrics.json", final_metrics(self, res, wall))
