"""Small finished-run folders for the statistics and report tests, in the engine's layout.

:func:`write_run` writes what ``segbench train`` leaves behind (config.json with the
configuration and its hashes, manifest.json with the precision really used,
metrics.json, per_image.csv), from a :class:`bench.engine.config.TrainConfig`, so the
tests exercise the same identity rules as real runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.engine.config import TrainConfig
from bench.engine.rundir import run_dir_for


def write_run(
    root: Path,
    model: str,
    seed: int,
    dice: np.ndarray,
    ids: list[str],
    *,
    dataset: str = "syn",
    epochs: int = 3,
    amp_used: str | None = "same",
    hd95: np.ndarray | None = None,
    commit: str = "0123456789abcdef",
    folder: str | None = None,
    with_config: bool = True,
    **overrides: Any,
) -> Path:
    """A finished run of ``model`` scored ``dice`` (per image) on ``ids``.

    ``overrides`` are TrainConfig fields (lr, amp, image_size, ...); ``amp_used`` is the
    precision the run really used (``"same"``: as requested). ``folder`` replaces the
    experiment folder name (two configurations in one folder, as after ``--force`` of
    one seed). HD95 per image defaults to 5 px; NaN entries count as undefined.
    """
    cfg = TrainConfig.from_recipe(
        "fair", model=model, data=f"/data/{dataset}", dataset=dataset, seed=seed,
        epochs=epochs, **overrides,
    )  # fmt: skip
    run = run_dir_for(cfg, root)
    if folder is not None:
        run = run.parent.parent / folder / run.name
    run.mkdir(parents=True)
    used = cfg.amp if amp_used == "same" else amp_used
    hd = np.full(len(ids), 5.0) if hd95 is None else np.asarray(hd95, dtype=float)
    dice = np.asarray(dice, dtype=float)
    if with_config:
        (run / "config.json").write_text(
            json.dumps(
                {
                    **cfg.to_dict(),
                    "dataset": dataset,
                    "config_hash": cfg.config_hash,
                }
            )
        )
        (run / "manifest.json").write_text(
            json.dumps(
                {
                    "command": f"segbench train --model {model} --seed {seed}",
                    "git_commit": commit,
                    "amp": used,
                    "amp_requested": cfg.amp,
                    "dataset": {"image_size": cfg.image_size},
                }
            )
        )
    test = {
        "acc": 0.9,
        "sen": 0.8,
        "spe": 0.95,
        "dsc": float(dice.mean()),
        "miou": float(dice.mean() * 0.8),
        "dice_mean": float(dice.mean()),
        "dice_std": float(dice.std()),
        "iou_mean": float(dice.mean() * 0.8),
        "iou_std": 0.1,
        "hd95_mean": float(np.nanmean(hd)) if np.isfinite(hd).any() else float("nan"),
        "hd95_median": 5.0,
        "isic_jaccard": 0.7,
        "n_images": len(ids),
        "hd95_n_undefined": int(np.isnan(hd).sum()),
    }
    metrics = {
        "model": model,
        "dataset": dataset,
        "seed": seed,
        "recipe": "fair",
        "epochs": epochs,
        "config_hash": cfg.config_hash,
        "status": "finished",
        "test": test,
        "environment": {
            "device": "cpu",
            "device_name": "Test CPU",
            "versions": {"python": "3.11", "torch": "2.14.1"},
            "git_commit": commit,
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame(
        {"image_id": ids, "dice": dice, "iou": dice * 0.8, "hd95": hd, "jaccard_thresholded": dice}
    ).to_csv(run / "per_image.csv", index=False)
    return run


def image_ids(n: int) -> list[str]:
    return [f"ISIC_{i:07d}" for i in range(n)]


def tiny_unet_config(data: str | Path, recipe: str = "fair", **overrides: Any) -> TrainConfig:
    """A UNet run small enough for a unit test: width 2, 32 px, 2 epochs, 1 CPU thread."""
    base: dict[str, Any] = dict(
        model="unet",
        model_kwargs={"base_width": 2},
        data=str(data),
        epochs=2,
        image_size=32,
        batch_size=4,
        threads=1,
        device="cpu",
    )
    return TrainConfig.from_recipe(recipe, **{**base, **overrides})
