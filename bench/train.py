"""Training engine: the authors' recipe, resumable, deterministic, CPU/GPU/DDP.

One run = one model, one dataset, one experiment (recipe, epochs), one seed, in
``<results>/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/`` (files described in
DEVELOPING.md, "Result files"), so runs of different experiments never collide.
:func:`run_training` is the API the sweep module calls; ``segbench train`` is its
command line.

Data path: the whole training split is read once from the preprocessing cache into a
uint8 tensor (on the GPU when training there), batches are drawn by index and augmented
as batched tensors (``bench.data.augment_batch``), so no JPEG is decoded and no worker
process is needed after the first epoch. Shuffling uses ``DistributedSampler`` (also with
one process) seeded by (seed, epoch), and the augmentation generator is reseeded from
(seed, epoch, rank), so an epoch replays identically after a resume.

Checkpoints: ``checkpoints/last.pt`` after every epoch (model, optimizer, scheduler,
grad scaler, RNG states of every rank, augmentation generator, position in the epoch,
history) and on Ctrl-C mid-epoch; ``checkpoints/best.pt`` (weights only) whenever the
selection metric improves. Both are written to a temp file and renamed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bench import distributed as bdist
from bench.evaluate import (
    autocast_context,
    evaluate_arrays,
    evaluate_split,
    resolve_device,
    to_nchw,
)
from bench.io import atomic_write, read_json, write_csv, write_json
from bench.losses import build_loss

__all__ = [
    "NonFiniteLossError",
    "RECIPES_DIR",
    "TrainConfig",
    "config_differences",
    "experiment_name",
    "register",
    "run_dir_for",
    "run_training",
]

RECIPES_DIR = Path(__file__).parent / "recipes"
CHECKPOINT_FORMAT = "segbench-checkpoint/1"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


# --------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything that defines a run. Defaults equal ``recipes/fair.yaml``.

    Fields in :data:`RUNTIME_FIELDS` say where and how fast to run, not what to
    compute, and are left out of :attr:`config_hash`.
    """

    model: str = "malunet"
    data: str = ""
    dataset: str | None = None  # results folder name; default: the data folder's name
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: str = "fair"
    # schedule of the run
    epochs: int = 300
    batch_size: int = 8
    image_size: int = 256
    seed: int = 42
    # AdamW
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # CosineAnnealingLR, stepped once per epoch
    t_max: int = 50
    eta_min: float = 1e-5
    # BCE + Dice
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_smooth: float = 1.0
    # data
    input_scaling: str = "minmax255"
    augment: bool = True
    train_splits: tuple[str, ...] = ("train",)
    split_file: str | None = None
    split_seed: int = 42  # the data split's seed: fixed across training seeds
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    # model selection: best checkpoint by `select_metric` on `select_split` ("none": last)
    select_split: str = "val"
    select_metric: str = "loss"
    val_every: int = 1
    # final evaluation
    eval_split: str = "test"
    threshold: float = 0.5
    original_resolution: bool = False
    # runtime
    device: str = "auto"
    amp: str | None = None
    deterministic: bool = True
    threads: int | None = None
    # channels_last activations: None = on for CPU (MALUNet trains ~1.4x faster there:
    # depthwise convolutions and max-pooling are much slower in NCHW), off on CUDA
    channels_last: bool | None = None
    cache_dir: str | None = None

    # ---------------------------------------------------------------- building

    @classmethod
    def from_recipe(cls, name_or_path: str | Path = "fair", **overrides: Any) -> TrainConfig:
        """A recipe (``fair``, ``paper`` or a YAML file) with keyword overrides on top.

        A recipe file may name another with ``inherit: <name or path>``.
        """
        values, source = _load_recipe(name_or_path)
        values.setdefault("recipe", Path(str(name_or_path)).stem)
        unknown = sorted(set(overrides) - _FIELD_NAMES)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig field(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(_FIELD_NAMES))}"
            )
        # coerce here so a bad override is reported as an override, not as the file's
        values.update({k: _coerce(k, v, "override") for k, v in overrides.items()})
        return cls.from_dict(values, source=source)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        unknown = sorted(set(values) - _FIELD_NAMES)
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(_FIELD_NAMES))}"
            )
        cfg = cls(**{k: _coerce(k, v, source) for k, v in values.items()})
        cfg.validate(source)
        return cfg

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def validate(self, source: str = "config") -> None:
        from bench.data import SCALINGS

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{source}: {name}={getattr(self, name)!r}: {why}")

        for name in ("epochs", "batch_size", "image_size", "val_every", "t_max"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        choices = {
            "select_split": ("val", "test", "none"),
            "select_metric": ("loss", "dsc"),
            "amp": (None, "bf16", "fp16"),
            "input_scaling": SCALINGS,
            "eval_split": ("val", "test"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"choose one of {', '.join(map(str, allowed))}")
        if not self.train_splits or set(self.train_splits) - {"train", "val"}:
            raise bad("train_splits", "a non-empty list of train and/or val")
        if self.select_split in self.train_splits:
            raise bad(
                "select_split", f"is also trained on (train_splits={list(self.train_splits)})"
            )
        # Only the paper reproduction may select on the test split / the split it scores;
        # anything else would publish test-selected numbers under a non-paper label.
        if self.recipe != "paper" and self.select_split in ("test", self.eval_split):
            raise bad(
                "select_split",
                f"recipe {self.recipe!r} must not select the checkpoint on the test split or "
                f"on the split it is scored on (eval_split={self.eval_split!r}); use "
                "recipe=paper to reproduce the authors' selection on the test split",
            )
        if not 0 < self.threshold < 1:
            raise bad("threshold", "must be in (0, 1)")
        if len(self.betas) != 2:
            raise bad("betas", "needs two values")

    # ---------------------------------------------------------------- identity

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"], d["train_splits"] = list(self.betas), list(self.train_splits)
        return d

    @property
    def dataset_name(self) -> str:
        if self.dataset:
            return self.dataset
        if not self.data:
            raise ValueError("TrainConfig.data: no dataset root given (--data ROOT)")
        return re.sub(r"[^a-z0-9]+", "-", Path(self.data).resolve().name.lower()).strip("-")

    @property
    def config_hash(self) -> str:
        """sha256 prefix of the result-defining fields (stable across machines and paths)."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        d["dataset"] = self.dataset_name
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


#: where / how fast to run: not part of the config hash (``data`` enters as its name)
RUNTIME_FIELDS = frozenset(
    {"data", "dataset", "device", "threads", "cache_dir", "deterministic", "channels_last"}
)
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TrainConfig))
_HINTS = typing.get_type_hints(TrainConfig)


def _load_recipe(name_or_path: str | Path, depth: int = 0) -> tuple[dict[str, Any], str]:
    import yaml

    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
            raise ValueError(
                f"unknown recipe {str(name_or_path)!r}: use one of {known} or a YAML file path"
            )
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of TrainConfig fields")
    values.pop("description", None)
    parent = values.pop("inherit", None)
    if parent:
        if depth > 5:
            raise ValueError(f"{path}: 'inherit' nests too deep")
        ppath = Path(parent) if Path(parent).suffix else parent
        if isinstance(ppath, Path) and not ppath.is_absolute():
            ppath = path.parent / ppath
        base, _ = _load_recipe(ppath, depth + 1)
        values = {**base, **values}
    return values, str(path)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert YAML / command-line values to the field's declared type."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if value is None or (
        optional and isinstance(value, str) and value.lower() in ("none", "null", "")
    ):
        if optional:
            return None
        raise ValueError(f"{source}: {name} cannot be empty")
    origin = typing.get_origin(hint) or hint
    try:
        if origin is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError("expected true or false")
                return low in ("true", "1", "yes", "on")
            return bool(value)
        if origin is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected an integer")
            return int(value)
        if origin is float:
            return float(value)
        if origin is str:
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [v for v in value.strip("[]() ").split(",") if v.strip()]
            elem = typing.get_args(hint)[0]
            return tuple(elem(v.strip() if isinstance(v, str) else v) for v in value)
        if origin is dict:
            if isinstance(value, str):
                import yaml

                value = yaml.safe_load(value) or {}
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return dict(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {name}={value!r}: {err}") from None
    return value


# --------------------------------------------------------------------------- run directory


def experiment_name(recipe: str, epochs: int, amp: str | None = None) -> str:
    """Folder name of an experiment, ``<recipe>-e<epochs>[-<amp>]`` (e.g. ``fair-e300``).

    The recipe is a name or a file's stem; characters unsafe in a folder name become ``-``.
    Mixed-precision runs get their own folder (``fair-e20-bf16``): they are another experiment.
    """
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", str(recipe)).strip("-.") or "recipe"
    return f"{slug}-e{int(epochs)}" + (f"-{amp}" if amp else "")


def run_dir_for(cfg: TrainConfig, results_dir: str | Path = "results") -> Path:
    """``<results>/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>``."""
    exp = experiment_name(cfg.recipe, cfg.epochs, cfg.amp)
    return Path(results_dir) / "runs" / cfg.dataset_name / cfg.model / exp / f"seed{cfg.seed}"


def config_differences(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """Result-defining fields where ``run_dir/config.json`` differs from ``cfg``.

    ``"key: old -> new"`` strings; empty when the file is missing or unreadable (the
    caller then names the config hashes only).
    """
    try:
        old = read_json(run_dir / "config.json")
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    # JSON round trip so tuples compare equal to the lists config.json holds
    new = json.loads(json.dumps(cfg.to_dict()))
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(new) | (set(old) & _FIELD_NAMES))
        if k not in RUNTIME_FIELDS and old.get(k) != new.get(k)
    ]


def _conflict_text(run_dir: Path, cfg: TrainConfig, old_hash: Any) -> str:
    diff = config_differences(run_dir, cfg)
    what = "; ".join(diff) if diff else f"config hash {old_hash} vs {cfg.config_hash}"
    return f"differs in {what}"


_RUN_FILES = (
    "metrics.json",
    "per_image.csv",
    "per_image_original.csv",
    "log.csv",
    "config.json",
    "manifest.json",
)


def _clear_run(run_dir: Path) -> None:
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for ev in run_dir.glob("events.out.tfevents.*"):
        ev.unlink()


def _save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    # torch.save into a temp file beside the target, then os.replace (bench.io.atomic_write)
    atomic_write(path, lambda fh: torch.save(obj, fh), mode="wb")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: cannot read checkpoint ({err}); delete it or pass --force to start over"
        ) from err


# --------------------------------------------------------------------------- determinism


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _configure_backends(deterministic: bool, device: str) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA backward kernels (e.g. grid_sample) have no
        # deterministic version; they warn instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def _backend_settings() -> dict[str, Any]:
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }


def _rng_state() -> dict[str, Any]:
    """All global RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loaded() -> bool:
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1) + 0.5
    except OSError:
        return False


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# --------------------------------------------------------------------------- Ctrl-C


class _StopRequest:
    """SIGINT sets a flag the loop checks between steps (a second Ctrl-C aborts at once)."""

    def __init__(self, quiet: bool) -> None:
        self.requested, self.quiet, self._prev = False, quiet, None

    def _handler(self, signum: int, frame: types.FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort now)",
            file=sys.stderr,
        )

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)


# --------------------------------------------------------------------------- training


class _AuxForward(nn.Module):
    """``forward`` returning ``(logits, [aux...])`` so DDP sees the deep-supervision path."""

    def __init__(self, model: nn.Module, has_aux: bool) -> None:
        super().__init__()
        self.model, self.has_aux = model, has_aux

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.has_aux:
            return self.model.forward_aux(x)
        return self.model(x), []


def _log(msg: str, quiet: bool) -> None:
    if not quiet and bdist.info().is_main:
        print(msg, file=sys.stderr, flush=True)


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    for s in range(0, len(order), size):
        yield order[s : s + size]


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
    device = resolve_device(cfg.device)
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


_BF16_PROBE = """
import sys, torch
from models import create_model
from bench.evaluate import autocast_context
name, batch, size, cl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
torch.manual_seed(0)
model = create_model(name).train()
fmt = torch.channels_last if cl else torch.contiguous_format
model = model.to(memory_format=fmt)
x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
for _ in range(2):
    with autocast_context("cpu", "bf16"):
        out = model(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    loss = out.float().square().mean()
    loss.backward()
    assert torch.isfinite(loss).item(), "non-finite loss"
"""


def _effective_amp(cfg: TrainConfig, device: str) -> tuple[str | None, str | None]:
    """The precision a run really uses, and why it differs from ``cfg.amp`` (or None).

    CUDA takes bf16 and fp16. A CPU takes bf16 (torch CPU autocast) when a training step
    survives it: CPU bf16 backward kernels have crashed the process (a segfault in a dilated
    depthwise convolution with channels_last was seen), which no ``try`` can catch, so the
    step is probed once in a child process and a crash falls back to fp32, said so in the
    run's manifest.
    """
    kind = torch.device(device).type
    if not cfg.amp or kind == "cuda":
        return cfg.amp, None
    if kind != "cpu" or cfg.amp != "bf16":
        return None, f"amp={cfg.amp} is not supported on {device}; training in fp32"
    cl = cfg.channels_last if cfg.channels_last is not None else True
    cmd = [
        sys.executable,
        "-c",
        _BF16_PROBE,
        cfg.model,
        str(min(cfg.batch_size, 4)),
        str(cfg.image_size),
        "1" if cl else "0",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None, "bf16 probe step timed out; training in fp32"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        if proc.returncode < 0:
            tail = f"killed by signal {-proc.returncode} ({tail})"
        return None, f"a CPU bf16 training step failed ({tail}); training in fp32"
    return "bf16", None


class _Trainer:
    """One run's state and steps; :func:`_run` decides whether and from where to run it."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, device: str, quiet: bool) -> None:
        from models import create_model, model_info

        self.cfg, self.run_dir, self.device, self.quiet = cfg, run_dir, device, quiet
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
        _configure_backends(cfg.deterministic, device)
        _seed_everything(cfg.seed + d.rank)
        self.amp, self.amp_note = _effective_amp(cfg, device)
        if self.amp_note:
            warnings.warn(f"{cfg.model}: {self.amp_note}", stacklevel=3)
        self._load_data()

        # model, loss, optimiser
        self.info = model_info(cfg.model)
        try:
            model = create_model(cfg.model, **cfg.model_kwargs).to(device)
        except TypeError as err:  # a builder argument the model does not take
            raise ValueError(f"model_kwargs={cfg.model_kwargs}: {err}") from None
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else device == "cpu"
        self.mem_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.mem_format)
        weights = (cfg.bce_weight, cfg.dice_weight, cfg.dice_smooth)
        self.loss_fn = build_loss(*weights, self.info.loss_weights)
        self.main_loss = build_loss(*weights)  # validation: main output only
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=cfg.t_max, eta_min=cfg.eta_min
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.net: nn.Module = _AuxForward(model, self.info.has_aux)
        if d.enabled:
            ids = [torch.device(device).index] if device.startswith("cuda") else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

        # progress through the run
        self.epoch, self.step = 0, 0
        self.partial: dict[str, Any] = {"loss_sum": 0.0, "seen": 0, "time": 0.0}
        self.best: dict[str, Any] = {"value": None, "epoch": None}
        self.history: list[dict[str, Any]] = []
        self.gen = torch.Generator()  # augmentation draws, on CPU (see bench.augment)
        self.sampler = torch.utils.data.DistributedSampler(
            range(self.n_train),
            num_replicas=d.world_size,
            rank=d.rank,
            shuffle=True,
            seed=cfg.seed,
        )

    def _load_data(self) -> None:
        from bench.data import prepare_data

        cfg, d = self.cfg, self.d

        def prep() -> Any:
            return prepare_data(
                cfg.data,
                size=cfg.image_size,
                split_file=cfg.split_file,
                seed=cfg.split_seed,
                val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction,
                cache_dir=cfg.cache_dir,
                progress=not self.quiet and d.is_main,
            )

        if d.is_main:  # rank 0 builds the cache, the others then find it
            self.prepared = prep()
        bdist.barrier()
        if not d.is_main:
            self.prepared = prep()
        p = self.prepared
        self.train_x = torch.cat([to_nchw(p.images(s)) for s in cfg.train_splits])
        self.train_y = torch.cat([to_nchw(p.masks(s)) for s in cfg.train_splits])
        self.n_train = self.train_x.shape[0]
        if self.n_train == 0:
            raise ValueError(
                f"{cfg.data}: the training split ({'+'.join(cfg.train_splits)}) is empty"
            )
        if torch.device(self.device).type == "cuda":  # the uint8 set fits easily: no loader
            self.train_x, self.train_y = self.train_x.to(self.device), self.train_y.to(self.device)
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
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.partial, self.best, self.history = ckpt["partial"], ckpt["best"], ckpt["history"]
        if len(ckpt["rng"]) == self.d.world_size:
            _set_rng_state(ckpt["rng"][self.d.rank])
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
        rng = bdist.gather_objects(_rng_state())
        gens = bdist.gather_objects(self.gen.get_state())
        if self.d.is_main:
            _save_checkpoint(
                self.last_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "config_hash": self.chash,
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
                },
            )

    def _save_best(self) -> None:
        if self.d.is_main:
            _save_checkpoint(
                self.best_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "config_hash": self.chash,
                    "model": self.model.state_dict(),
                    "epoch": self.best["epoch"],
                    "select": f"{self.cfg.select_metric}@{self.sel_split}",
                    "value": self.best["value"],
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
                        if k not in ("epoch", "best") and v is not None:
                            writer.add_scalar(k, v, row["epoch"])
                    writer.flush()
                _log(_summary_line(row, cfg.epochs, self.sel_split), self.quiet)
        if writer:
            writer.close()

    def _train_epoch(self, stop: _StopRequest) -> dict[str, Any]:
        from bench.data import augment_batch, scale_images

        cfg, d, device = self.cfg, self.d, self.device
        self.sampler.set_epoch(self.epoch)
        order = list(self.sampler)
        if self.step == 0:  # a fresh epoch (else: resuming inside it, states restored)
            self.gen.manual_seed(_epoch_seed(cfg.seed, self.epoch, d.rank))
        lr = self.optimizer.param_groups[0]["lr"]
        self.net.train()
        steps = math.ceil(len(order) / self.per_rank_batch)
        bar = None
        if not self.quiet and d.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=steps,
                initial=self.step,
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                unit="batch",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        part = self.partial
        t0 = time.perf_counter() - part["time"]
        try:
            for step, idx in enumerate(_batches(order, self.per_rank_batch)):
                if step < self.step:
                    continue
                x, y = self.train_x[idx], self.train_y[idx]
                if x.device != torch.device(device):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if cfg.augment:
                    x, y = augment_batch(x, y, self.gen)
                x = scale_images(x, cfg.input_scaling).contiguous(memory_format=self.mem_format)
                with autocast_context(device, self.amp):
                    logits, aux = self.net(x)
                    loss = self.loss_fn(logits, y.float(), aux)
                value = float(loss.detach())
                flags = torch.tensor([float(math.isfinite(value)), float(stop.requested)])
                if d.enabled:  # every rank stops together (a NaN or Ctrl-C on any rank)
                    flags = bdist.all_reduce_sum(flags) / d.world_size
                if flags[0] < 1:
                    self._fail(step, value)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                part["loss_sum"] += value * len(idx)
                part["seen"] += len(idx)
                if bar:
                    rate = part["seen"] * d.world_size / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(
                        loss=f"{part['loss_sum'] / part['seen']:.4f}",
                        img_s=f"{rate:.1f}",
                        refresh=False,
                    )
                    bar.update()
                if flags[1] > 0:  # Ctrl-C: save this position, then stop
                    part["time"] = time.perf_counter() - t0
                    self.step = step + 1
                    self.save_last()
                    _log(
                        f"saved {self.last_path} (epoch {self.epoch + 1}, step {self.step}); "
                        "run the same command again to resume",
                        self.quiet,
                    )
                    raise KeyboardInterrupt
        finally:
            if bar:
                bar.close()
        train_time = time.perf_counter() - t0
        total = bdist.all_reduce_sum(
            torch.tensor([part["loss_sum"], float(part["seen"])], dtype=torch.float64)
        )
        return {
            "epoch": self.epoch + 1,
            "loss": float(total[0] / total[1]),
            "lr": lr,
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
            device=self.device,
            batch_size=cfg.batch_size,
            scaling=cfg.input_scaling,
            amp=self.amp,
            threshold=cfg.threshold,
            loss_fn=self.main_loss,
            compute_hd95=False,
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
        value = res.loss if cfg.select_metric == "loss" else res.metrics["dsc"]
        prev = self.best["value"]
        better = prev is None or (value < prev if cfg.select_metric == "loss" else value > prev)
        if better:
            self.best = {"value": float(value), "epoch": epoch}
        row["best"] = better
        return better

    def _fail(self, step: int, value: float) -> None:
        cfg = self.cfg
        kept = (
            f"last good checkpoint: {self.last_path} (end of epoch {self.epoch})"
            if self.last_path.is_file()
            else "no checkpoint was written yet"
        )
        msg = (
            f"non-finite loss ({value}) at epoch {self.epoch + 1}, step {step + 1} of "
            f"{cfg.model}: training stopped; {kept}. Try a lower learning rate, amp off, or "
            "check the data."
        )
        if self.d.is_main:
            write_json(
                self.run_dir / "metrics.json",
                {
                    "model": cfg.model,
                    "dataset": cfg.dataset_name,
                    "seed": cfg.seed,
                    "recipe": cfg.recipe,
                    "epochs": cfg.epochs,
                    "config_hash": self.chash,
                    "status": "failed",
                    "reason": msg,
                },
            )
        raise NonFiniteLossError(msg)

    # ---------------------------------------------------------------- final test

    def test(self) -> None:
        """Score the selected weights on the evaluation split and write the results."""
        cfg = self.cfg
        if self.best_path.is_file():
            self.model.load_state_dict(_load_checkpoint(self.best_path)["model"])
        bdist.broadcast_buffers(self.model)
        res = evaluate_split(
            self.model,
            self.prepared,
            cfg.eval_split,
            device=self.device,
            batch_size=cfg.batch_size,
            scaling=cfg.input_scaling,
            amp=self.amp,
            threshold=cfg.threshold,
            original_resolution=cfg.original_resolution,
            progress=not self.quiet,
            desc=f"{cfg.model} {cfg.eval_split}",
        )
        if self.d.is_main:
            self._write_final(res, time.perf_counter() - self.t_start)
            m = res.metrics
            _log(
                f"{cfg.model} {cfg.eval_split}: DSC {m['dsc']:.4f}  mIoU {m['miou']:.4f}  "
                f"Dice/img {m['dice_mean']:.4f}  HD95 {m['hd95_mean']:.2f}px  -> {self.run_dir}",
                self.quiet,
            )

    # ---------------------------------------------------------------- result files

    def _write_start_files(self) -> None:
        from bench.env import environment

        cfg, p = self.cfg, self.prepared
        write_json(
            self.run_dir / "config.json",
            {**cfg.to_dict(), "dataset": cfg.dataset_name, "config_hash": self.chash},
        )
        env = environment(self.device)
        write_json(
            self.run_dir / "manifest.json",
            {
                "command": " ".join(sys.argv),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "resumed_at_epoch": self.epoch or None,
                "git_commit": env.get("git_commit"),
                "versions": env.get("versions"),
                "device": self.device,
                "world_size": self.d.world_size,
                "per_process_batch": self.per_rank_batch,
                "channels_last": self.channels_last,
                "amp": self.amp,
                "amp_requested": cfg.amp,
                "amp_note": self.amp_note,
                "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                "environment": env,
                "torch_backends": _backend_settings(),
                "dataset": {
                    "name": cfg.dataset_name,
                    "data_name": p.name,
                    "root": str(cfg.data),
                    "layout": p.layout.name,
                    "fingerprint": p.fingerprint,
                    "split_file": str(p.split_file),
                    "split_counts": {k: len(v) for k, v in p.split_ids.items()},
                    "image_size": cfg.image_size,
                },
                "model": {
                    "name": cfg.model,
                    "kwargs": cfg.model_kwargs,
                    "params": sum(t.numel() for t in self.model.parameters()),
                    "loss_weights": [self.info.loss_weights[0], list(self.info.loss_weights[1])],
                },
            },
        )

    def _write_final(self, res: Any, wall: float) -> None:
        from bench.env import environment

        cfg = self.cfg
        speeds = [r["images_per_s"] for r in self.history]
        times = [r["epoch_time_s"] for r in self.history]
        out: dict[str, Any] = {
            "model": cfg.model,
            "dataset": cfg.dataset_name,
            "seed": cfg.seed,
            "recipe": cfg.recipe,
            "epochs": cfg.epochs,
            "config_hash": self.chash,
            "status": "finished",
            "best_epoch": self.best["epoch"],
            "selection": {
                "split": cfg.select_split,
                "metric": cfg.select_metric,
                "value": self.best["value"],
            },
            "test": res.metrics,
        }
        if res.original is not None:
            out["test_original_resolution"] = res.original
        # medians over epochs: robust to the first (warm-up) epoch and to load spikes
        out.update(
            {
                "train_images_per_s": float(np.median(speeds)) if speeds else None,
                "epoch_time_s": float(np.median(times)) if times else None,
                "wall_time_s": wall,
                "eval_split": cfg.eval_split,
                "environment": environment(self.device),
            }
        )
        write_csv(self.run_dir / "per_image.csv", res.per_image)
        if res.original_per_image is not None:
            write_csv(self.run_dir / "per_image_original.csv", res.original_per_image)
        write_json(self.run_dir / "metrics.json", out)


def _summary_line(row: dict[str, Any], epochs: int, split: str | None) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}", f"lr {row['lr']:.2e}"]
    if split and f"{split}_loss" in row:
        parts += [
            f"{split}_loss {row[f'{split}_loss']:.4f}",
            f"{split}_dsc {row[f'{split}_dsc']:.4f}",
        ]
    parts += [f"{row['epoch_time_s']:.1f}s", f"{row['images_per_s']:.1f} img/s"]
    return "  ".join(parts) + ("  *best" if row.get("best") else "")


# --------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one model on one dataset (the authors' recipe by default)",
        description="Train, select the best checkpoint and score it on the test split. Writes "
        "results/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/ (config, manifest, "
        "log.csv, TensorBoard events, checkpoints, metrics.json, per_image.csv). A finished "
        "run of the same configuration is skipped; one of another experiment (recipe, epochs) "
        "goes to its own folder; an unfinished one resumes from its last checkpoint.",
    )
    p.add_argument("--model", required=True, help="registry name (segbench models)")
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument(
        "--dataset", default=None, help="name in the results path (default: the data folder's name)"
    )
    p.add_argument(
        "--recipe",
        default="fair",
        help="fair (default; selection on validation), paper (the authors' choices) or a YAML file",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs (recipe: 300)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (recipe: 8)")
    p.add_argument("--seed", type=int, default=None, help="training seed (recipe: 42)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument(
        "--amp",
        choices=["bf16", "fp16", "none"],
        default=None,
        help="mixed precision: bf16 or fp16 on CUDA, bf16 on CPU (torch autocast; falls back to fp32 where a probe step crashes)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue an unfinished run from checkpoints/last.pt (default: yes)",
    )
    p.add_argument("--force", action="store_true", help="start over even if finished")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes (GPUs) for one DDP run, launched through torchrun",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field, e.g. --set lr=5e-4 --set val_every=5",
    )
    p.set_defaults(func=_cmd_train)


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from models import UnknownModelError

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return bdist.launch_torchrun(args.nproc, _strip_nproc(sys.argv[1:]))
    overrides = _parse_sets(args.set)
    for key in ("model", "data", "dataset", "epochs", "batch_size", "seed", "device", "threads"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.amp is not None:
        overrides["amp"] = None if args.amp == "none" else args.amp
    try:
        cfg = TrainConfig.from_recipe(args.recipe, **overrides)
        run_training(cfg, args.results, resume=args.resume, force=args.force, quiet=args.quiet)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, UnknownModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
