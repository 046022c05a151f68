"""Run-aware evaluation, the work behind ``segbench evaluate``: where the settings come from, what may differ, and the result files.

A model must be scored the way it was trained. The settings that define that
(:data:`MODEL_SETTINGS`: model, builder kwargs, image size, input scaling, threshold,
precision) and the split settings (:data:`SPLIT_SETTINGS`) come from, in order:

1. ``--run RUN_DIR``: the run's ``config.json`` (precision: the one the run really used,
   ``manifest.json``); weights from ``checkpoints/best.pt`` (``last.pt`` when no best
   was saved, as the run's own test did);
2. ``--checkpoint FILE`` written by segbench: the ``config`` and ``precision`` it carries;
3. the command line, with :data:`DEFAULTS` for what it leaves out (checkpoints that carry
   no configuration, e.g. the authors' own).

A setting given on the command line that differs from the stored one (e.g. a 64-px run
scored at 256) is refused with the list of differences (:class:`SettingsMismatch`)
unless ``allow_mismatch``; then a warning says so and the result records it under
``mismatches``. Split settings count only when scoring the dataset the run was trained
on (another split there would score training images); on another dataset they only
choose the images. The HD95 convention is a scoring option, never a mismatch.

With a run, the result goes to ``<run dir>/eval/<eval dataset>-<split>/`` (+ ``-<key><value>``
for each overridden setting and ``-hd95<convention>`` when it is not the run's), else to
``out``; files: ``metrics.json`` (:func:`evaluation_record`) and ``per_image.csv``.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.core.io import read_json, write_csv, write_json
from bench.core.precision import (
    DTYPES,
    autocast_dtype,
    can_autocast,
    deterministic_mode,
    effective_channels_last,
    memory_format,
)
from bench.engine.config import SPLIT_KEYWORDS, dataset_label, split_kwargs
from bench.engine.evaluate import EvalResult, EvalSettings
from bench.engine.overlap import overlap_note

#: settings that define how a model was trained and must be scored
MODEL_SETTINGS = ("model", "model_kwargs", "image_size", "input_scaling", "threshold", "precision")
#: settings that choose the images (count as a mismatch on the run's own dataset only)
SPLIT_SETTINGS = (*SPLIT_KEYWORDS, "binarize")
#: for a checkpoint that carries no configuration and a setting the command line leaves out
DEFAULTS: dict[str, Any] = {
    "model": None,
    "model_kwargs": {},
    "image_size": 256,
    "input_scaling": "minmax255",
    "threshold": 0.5,
    "precision": "fp32",
    "split_file": None,
    "split_seed": 42,
    "val_fraction": 0.1,
    "test_fraction": 0.3,
    "split_mode": "auto",
    "binarize": False,
}
EVAL_FORMAT = "segbench-eval/1"


class SettingsMismatch(ValueError):
    """Given settings differ from the ones the model was trained with."""


@dataclass
class EvalSource:
    """Where the weights and the stored settings come from."""

    checkpoint: Path | None = None
    run_dir: Path | None = None
    config: dict[str, Any] | None = None  # the run's TrainConfig as a dict (+ "dataset")
    precision: str | None = None  # the precision the run really used
    #: with a run: its metrics.json status ("finished", "failed"; None: not written yet)
    run_status: str | None = None
    #: what the output says about the weights (an unfinished run, a missing best.pt)
    notes: list[str] = field(default_factory=list)
    #: with a run: the dataset identity it recorded (manifest.json "dataset")
    run_dataset: dict[str, Any] = field(default_factory=dict)

    @property
    def stored(self) -> dict[str, Any]:
        """The stored values of :data:`MODEL_SETTINGS` and :data:`SPLIT_SETTINGS`."""
        if self.config is None:
            return {}
        c = self.config
        out = {
            "model": c.get("model"),
            # what the model was really built with: the recipe's per-model entry (e.g. the
            # paper recipe's untied MALUNet) under the run's own model_kwargs
            "model_kwargs": {
                **(c.get("per_model_kwargs") or {}).get(c.get("model"), {}),
                **(c.get("model_kwargs") or {}),
            },
            "image_size": c.get("image_size"),
            "input_scaling": c.get("input_scaling"),
            "threshold": c.get("threshold"),
            "precision": self.precision or (c.get("amp") or "fp32"),
            "split_file": c.get("split_file"),
            "split_seed": c.get("split_seed"),
            "val_fraction": c.get("val_fraction"),
            "test_fraction": c.get("test_fraction"),
            "split_mode": c.get("split_mode", "auto"),  # runs from before the field: auto
            "binarize": bool(c.get("binarize", False)),
        }
        return {k: v for k, v in out.items() if v is not None or k == "split_file"}


def load_source(
    run_dir: str | Path | None = None, checkpoint: str | Path | None = None
) -> EvalSource:
    """The weights file and stored settings of a run folder and / or a checkpoint file."""
    if run_dir is not None:
        run = Path(run_dir)
        cfg_path = run / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"--run {run}: no config.json (not a segbench run folder)")
        config = read_json(cfg_path)
        notes: list[str] = []
        status = _run_status(run)
        if checkpoint is None:
            best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
            if best.is_file():
                checkpoint = best
            elif last.is_file():
                checkpoint = last
                notes.append(
                    f"{best} is missing: scored {last} instead (the weights of the last "
                    "epoch saved, not the run's selected ones)"
                )
            else:
                raise FileNotFoundError(
                    f"--run {run}: no checkpoints/best.pt or last.pt (checkpoints are not "
                    "committed: score the run where it was trained, or pass --checkpoint)"
                )
        if status != "finished":
            notes.append(
                f"{run} is not a finished run (status: {status or 'no metrics.json yet'}): "
                f"scored {Path(checkpoint).name} as it is now; a later epoch may replace it"
            )
        precision = None
        for name, key in (("metrics.json", "precision"), ("manifest.json", "amp")):
            try:
                rec = read_json(run / name)
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and key in rec:
                precision = rec[key] or "fp32"
                break
        from bench.engine.run_record import recorded_dataset

        return EvalSource(
            Path(checkpoint), run, config, precision, status, notes, recorded_dataset(run)
        )
    if checkpoint is None:
        return EvalSource()
    from bench.engine.checkpoints import read_checkpoint_file

    path = Path(checkpoint)
    obj = read_checkpoint_file(path)
    config = obj.get("config") if isinstance(obj, dict) else None
    precision = obj.get("precision") if isinstance(obj, dict) else None
    return EvalSource(path, None, config if isinstance(config, dict) else None, precision)


def _run_status(run: Path) -> str | None:
    try:
        rec = read_json(run / "metrics.json")
    except (OSError, ValueError):
        return None
    return str(rec.get("status")) if isinstance(rec, dict) and rec.get("status") else None


def _canon(v: Any) -> Any:
    return json.loads(json.dumps(v))  # tuples -> lists, so stored and given compare


def resolve_settings(
    source: EvalSource, given: dict[str, Any], same_data: bool
) -> tuple[dict[str, Any], list[str]]:
    """The settings to score with and the differences from the stored ones.

    ``given``: command-line values, None where not given. A difference is
    ``"key: trained with X, given Y"``.
    """
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown evaluation setting(s): {', '.join(sorted(unknown))}")
    stored = source.stored
    settings, diffs = {}, []
    for key, default in DEFAULTS.items():
        value = given.get(key)
        if value is None:
            settings[key] = stored.get(key, default)
            continue
        settings[key] = value
        counts = key in MODEL_SETTINGS or same_data
        if key in stored and counts and _canon(value) != _canon(stored[key]):
            diffs.append(f"{key}: trained with {stored[key]!r}, given {value!r}")
    if settings["precision"] not in DTYPES:
        raise ValueError(f"precision {settings['precision']!r}: choose one of {DTYPES}")
    return settings, diffs


@dataclass
class EvalOutcome:
    result: EvalResult
    record: dict[str, Any]
    out_dir: Path | None
    warnings: list[str] = field(default_factory=list)


def evaluate_model(
    *,
    run_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    baseline: str | None = None,
    data: str | Path | None = None,
    split: str | None = None,
    given: dict[str, Any] | None = None,
    allow_mismatch: bool = False,
    hd95_convention: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    original_resolution: bool = False,
    save_masks: str | Path | None = None,
    compute_hd95: bool = True,
    progress: bool = False,
    command: str | None = None,
    keep_training_images: bool = False,
) -> EvalOutcome:
    """Score a run, a checkpoint or a trivial baseline on a dataset split; write the files.

    See the module docstring for where settings come from. ``split``: train / val / test
    of the dataset's split or ``all`` (every image of the folder); default: the run's
    ``eval_split`` on the run's own dataset, else required. On another dataset, images
    the run trained or was selected on are left out (:mod:`bench.engine.overlap`) unless
    ``keep_training_images``. Raises
    :class:`SettingsMismatch` (refused differences), ``ValueError`` / ``FileNotFoundError``
    for bad input.
    """
    from bench.core.device import resolve_device
    from bench.core.env import command_line, environment
    from bench.data.cache import prepare_data
    from bench.engine.evaluate import baseline_model, evaluate_split, split_parts
    from bench.engine.metrics import HD95_CONVENTIONS

    if baseline and (run_dir or checkpoint):
        raise ValueError("--baseline replaces --run / --checkpoint: give one or the other")
    source = load_source(run_dir, checkpoint)
    if not baseline and source.checkpoint is None:
        raise ValueError("give --run RUN_DIR, --checkpoint FILE (with --model) or --baseline")
    cfg = source.config or {}
    data = _eval_data(cfg, data)
    eval_dataset = dataset_label(data)
    train_dataset = cfg.get("dataset")
    same_data = train_dataset is not None and (
        train_dataset == eval_dataset
        or (bool(cfg.get("data")) and Path(cfg["data"]).resolve() == Path(data).resolve())
    )
    if split is None:
        if not same_data:
            raise ValueError(
                f"give --split: {eval_dataset} is not the dataset the model was trained on "
                f"({train_dataset or 'unknown'}); --split all scores every image of it"
            )
        split = cfg.get("eval_split", "test")
    settings, diffs = resolve_settings(source, given or {}, same_data)
    if not baseline and not settings["model"]:
        raise ValueError(f"{source.checkpoint}: carries no configuration; give --model NAME")
    notes = [*source.notes, *_mismatch_notes(source, diffs, allow_mismatch)]
    hd95 = hd95_convention or cfg.get("hd95", "monai")
    if hd95 not in HD95_CONVENTIONS:
        raise ValueError(f"--hd95 {hd95!r}: choose one of {', '.join(HD95_CONVENTIONS)}")

    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--results {out}: exists and is not a folder")
    dev = str(resolve_device(device, allow=None))
    amp = _autocast(settings["precision"], dev, notes)
    prepared = prepare_data(
        data,
        size=settings["image_size"],
        **split_kwargs(settings),
        binarize=settings["binarize"],
        progress=progress,
    )
    split_parts(prepared, split)  # an empty split fails here, naming --split all
    split_overridden = any(d.split(":", 1)[0] in SPLIT_SETTINGS for d in diffs)
    if same_data and source.run_dir is not None and not split_overridden:
        # (with another split, allowed by allow_mismatch, the split hash differs by design)
        _check_same_data(source, prepared)
    overlap = None
    if not same_data and source.run_dir is not None:
        overlap = _overlap(source, prepared, split, keep_training_images, progress)
        note = overlap_note(overlap, eval_dataset)
        if note:
            notes.append(note)

    if baseline:
        model = baseline_model(baseline, prepared.masks("train")).to(dev)
        model_name = f"baseline-{baseline}"
    else:
        model_name = settings["model"]
        model = _trained_model(source, settings, dev)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    scoring = EvalSettings(
        device=dev,
        batch_size=batch_size or int(cfg.get("batch_size", 8)),
        scaling=settings["input_scaling"],
        amp=amp,
        threshold=settings["threshold"],
        compute_hd95=compute_hd95,
        hd95_convention=hd95,
    )
    res = evaluate_split(
        model,
        prepared,
        split,
        scoring,
        original_resolution=original_resolution,
        save_masks=save_masks,
        progress=progress,
        desc=f"{model_name} {eval_dataset} {split}",
        exclude=() if overlap is None or overlap["kept"] else [m["id"] for m in overlap["images"]],
    )
    record = evaluation_record(
        res,
        source=source,
        model=model_name,
        settings=settings,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        prepared=prepared,
        split=split,
        precision=amp or "fp32",
        hd95_convention=hd95 if compute_hd95 else None,
        mismatches=diffs,
        notes=notes,
        command=command if command is not None else command_line(),
        environment=environment(dev),
        overlap=overlap,
    )
    out_dir = Path(out) if out else None
    if out_dir is None and source.run_dir is not None:
        label = f"{eval_dataset}-{split}"
        for d in diffs:
            key = d.split(":", 1)[0]
            label += f"-{key}{_slug(settings[key])}"
        if hd95 != cfg.get("hd95", "monai"):
            label += f"-hd95{hd95}"
        out_dir = source.run_dir / "eval" / label  # beside the run, one folder per setting
    if out_dir is not None:
        write_csv(out_dir / "per_image.csv", res.per_image)
        if res.original_per_image is not None:
            write_csv(out_dir / "per_image_original.csv", res.original_per_image)
        write_json(out_dir / "metrics.json", record)  # last: its presence means complete
    return EvalOutcome(res, record, out_dir, notes)


def _check_same_data(source: EvalSource, prepared: Any) -> None:
    """Scoring the run's own dataset: it must still be the data the run trained on, else
    its "test" split may hold training images (the same check as resume)."""
    from bench.engine.run_record import DatasetChanged, dataset_changes, dataset_identity

    changed = dataset_changes(source.run_dataset, dataset_identity(prepared))
    if changed:
        raise DatasetChanged(
            f"{prepared.root} is not the data {source.run_dir} was trained on, though it has "
            f"the same name ({'; '.join(changed)}); its {prepared.name} splits would mix the "
            "run's training images into the scored ones. Restore the data, or score a "
            "renamed copy of the new folder as another dataset (--split all, which leaves "
            "out the run's own images)"
        )


def _overlap(
    source: EvalSource, prepared: Any, split: str, keep: bool, progress: bool
) -> dict[str, Any]:
    """The overlap record of the images of ``split`` of another dataset with the run's
    training and validation images (:mod:`bench.engine.overlap`)."""
    from bench.data.duplicates import NEAR_THRESHOLD
    from bench.engine.evaluate import split_parts
    from bench.engine.overlap import overlap_record, training_overlap

    ids = [i for part in split_parts(prepared, split) for i in prepared.split_ids[part]]
    try:
        matches = training_overlap(
            source.config or {}, source.run_dataset, prepared, ids, progress=progress
        )
    except (FileNotFoundError, ValueError):
        if not keep:
            raise
        # the run's own images cannot be told here: kept, as the flag asked, and recorded
        return {"checked": False, "kept": True, "n_total": len(ids), "n_matched": 0,
                "n_scored": len(ids), "images": [], "by": {}}  # fmt: skip
    return overlap_record(matches, len(ids), keep, NEAR_THRESHOLD)


def _eval_data(cfg: dict[str, Any], data: str | Path | None) -> str | Path:
    """The folder to score: ``--data``, else the run's own dataset (which must exist here)."""
    if data is not None:
        return data
    if not cfg.get("data"):
        raise ValueError("give --data ROOT (the dataset folder to score)")
    if not Path(cfg["data"]).is_dir():
        raise FileNotFoundError(
            f"the run's dataset folder {cfg['data']} does not exist here; pass --data ROOT"
        )
    return cfg["data"]


def _mismatch_notes(source: EvalSource, diffs: list[str], allow_mismatch: bool) -> list[str]:
    """Settings that differ from the training run's: refused unless ``allow_mismatch``,
    then recorded as a note (and warned about)."""
    if not diffs:
        return []
    listing = "; ".join(diffs)
    if not allow_mismatch:
        raise SettingsMismatch(
            f"{source.run_dir or source.checkpoint}: the model was trained with other settings "
            f"({listing}); score it with its own settings (leave those options out) or pass "
            "--allow-mismatch to score it anyway (recorded in the result)"
        )
    return [f"scoring with settings the model was not trained with: {listing}"]


def _autocast(precision: str, dev: str, notes: list[str]) -> str | None:
    """The autocast dtype to score ``precision`` in on ``dev`` (None: fp32); one the device
    cannot autocast (:func:`bench.core.precision.can_autocast`) falls back to fp32 with a
    note."""
    amp = autocast_dtype(precision)
    if amp and not can_autocast(dev, amp):
        notes.append(f"{precision} has no autocast on {dev}: scored in fp32")
        return None
    return amp


def _trained_model(source: EvalSource, settings: dict[str, Any], dev: str) -> torch.nn.Module:
    """The registered model with the source's weights, set up as the run's own test was."""
    from bench.engine.checkpoints import load_weights
    from bench.engine.determinism import _configure_backends
    from models import UnknownModelError, create_model

    try:
        model = create_model(settings["model"], **settings["model_kwargs"]).to(dev)
    except TypeError as err:
        raise ValueError(f"model_kwargs={settings['model_kwargs']}: {err}") from None
    except UnknownModelError as err:
        hint = _import_hint(source.run_dir)
        raise UnknownModelError(f"{err}{hint}") from None
    cfg = source.config
    if cfg is not None:
        # as the run's own test: the trainer's deterministic and memory-format rules
        # (bench.core.precision) on the run's settings, so the metrics come out exact
        _configure_backends(deterministic_mode(cfg.get("deterministic", True), dev), dev)
        cl = effective_channels_last(cfg.get("channels_last"), dev)
        model = model.to(memory_format=memory_format(cl))
    load_weights(model, source.checkpoint)  # type: ignore[arg-type]
    return model


def _import_hint(run_dir: Path | None) -> str:
    """What the run recorded about where an external model came from (``model_source`` in
    its metrics.json), as the ``--import`` to give again; "" when nothing was recorded.

    Not imported automatically: a results folder may come from someone else, and importing
    runs its code."""
    if run_dir is None or not (run_dir / "metrics.json").is_file():
        return ""
    try:
        src = json.loads((run_dir / "metrics.json").read_text()).get("model_source") or ""
    except (OSError, ValueError, AttributeError):
        return ""
    kind, _, where = str(src).partition(" ")
    if kind in ("file", "module") and where:
        return f". The run {run_dir} trained it from {src}: pass --import {where}"
    return f". The run {run_dir} trained it from {src}" if src else ""


def _slug(v: Any) -> str:
    text = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


def evaluation_record(
    res: EvalResult,
    *,
    source: EvalSource,
    model: str,
    settings: dict[str, Any],
    train_dataset: str | None,
    eval_dataset: str,
    prepared: Any,
    split: str,
    precision: str,
    hd95_convention: str | None,
    mismatches: list[str],
    notes: list[str],
    command: str,
    environment: dict[str, Any],
    overlap: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` of an evaluation (schema ``segbench-eval/1``, DEVELOPING.md).

    Ties the number to its inputs: ``checkpoint_sha256`` and ``checkpoint_epoch`` (the
    report drops an evaluation whose checkpoint is no longer the run's best),
    ``run_status`` at scoring time, the scored data's ``eval_fingerprint`` and
    ``eval_split_hash``, the run's ``train_fingerprint`` / ``train_split_hash``, and
    ``training_overlap`` (images of another dataset the run had seen, excluded or kept).
    """
    from bench.engine.run_record import checkpoint_record

    cfg = source.config or {}
    ck = checkpoint_record(source.checkpoint) if source.checkpoint else None
    rec: dict[str, Any] = {
        "format": EVAL_FORMAT,
        "model": model,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "eval_root": str(prepared.root),
        "eval_layout": prepared.layout.name,
        "split": split,
        "n_images": int(res.metrics["n_images"]),
        "metrics": res.metrics,
        "hd95_convention": hd95_convention,
        "precision": precision,
        "config_hash": cfg.get("config_hash"),
        "recipe": cfg.get("recipe"),
        "epochs": cfg.get("epochs"),
        "seed": cfg.get("seed"),
        "run_dir": str(source.run_dir) if source.run_dir else None,
        "run_status": source.run_status,
        "checkpoint": str(source.checkpoint) if source.checkpoint else None,
        "checkpoint_sha256": ck["sha256"] if ck else None,
        "checkpoint_epoch": ck["epoch"] if ck else None,
        "train_fingerprint": source.run_dataset.get("fingerprint"),
        "train_split_hash": source.run_dataset.get("split_hash"),
        "eval_fingerprint": prepared.fingerprint,
        "eval_split_hash": prepared.split_hash,
        "training_overlap": overlap if overlap is not None else {"checked": False},
        "settings": settings,
        "split_source": {
            "split_file": str(prepared.split_file),
            "counts": {k: len(v) for k, v in prepared.split_ids.items()},
        },
        "mismatches": mismatches,
        "notes": notes,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment,
    }
    if res.original is not None:
        rec["metrics_original_resolution"] = res.original
    return rec
