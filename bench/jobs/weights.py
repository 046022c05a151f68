"""Publishing a finished run's best checkpoint as named, hash-verified weights.

``segbench weights publish RUN_DIR`` copies the run's ``checkpoints/best.pt`` model
``state_dict`` (tensors only, no optimiser) to ``results/weights/<model>/<name>.pt`` and
adds an entry to ``results/weights/index.json`` (see :mod:`models.weights`), so that
``create_model(model, weights=name)`` rebuilds exactly the scored model. With
``--store DIR`` the file goes to ``DIR/<model>/<name>.pt`` outside git instead (for
weights over the limits below) and only its index entry, with the sha256, is committed.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.core.io import read_json
from bench.engine.rundir import read_finished_run, results_relative
from models.weights import INDEX_FORMAT, file_sha256, weights_dir

#: the largest weights file publish writes: results/weights is committed to git, which
#: takes no file over 10 MB. Of the light models only MALUNet (0.7 MB) and EGE-UNet
#: (0.2 MB) fit; lraspp (13 MB), SegFormer-B0 (15 MB) and the smp U-Nets (23-27 MB) stay
#: in their runs' checkpoints/ folders, as the heavy models do
MAX_WEIGHTS_MB = 10.0
#: what results/weights may hold in all, so that every clone stays light (a few dozen
#: seeds and recipes of the models that fit)
MAX_TOTAL_MB = 50.0


def default_name(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """``<dataset>-<recipe>-e<epochs>-s<seed>``, e.g. ``isic2017-256-paper-e300-s42``."""
    return f"{metrics['dataset']}-{metrics['recipe']}-e{metrics['epochs']}-s{config['seed']}"


def publish_run(
    run_dir: str | Path,
    name: str | None = None,
    *,
    force: bool = False,
    store: str | Path | None = None,
) -> dict:
    """Publish ``run_dir``'s best checkpoint; returns the index entry written.

    Refuses an unfinished run, a run without ``best.pt``, a checkpoint from another
    configuration than the run's and an existing name (unless ``force``). Without
    ``store`` it also refuses weights over :data:`MAX_WEIGHTS_MB` and weights that would
    take the committed folder past :data:`MAX_TOTAL_MB`; with ``store`` the file is
    written under that folder (outside git) and the index entry says ``store:
    external``. Nothing is written on refusal.
    """
    import torch

    run = Path(run_dir)
    metrics, config = read_finished_run(run)
    ckpt_path = run / "checkpoints" / "best.pt"
    if not ckpt_path.is_file():
        raise ValueError(f"{ckpt_path}: missing (publish where the run was trained)")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if ckpt.get("config_hash") != config.get("config_hash"):
        raise ValueError(
            f"{ckpt_path}: config hash {ckpt.get('config_hash')} is not the run's "
            f"{config.get('config_hash')}"
        )
    if ckpt.get("epoch") != metrics.get("best_epoch"):
        raise ValueError(
            f"{ckpt_path}: epoch {ckpt.get('epoch')} is not the scored best epoch "
            f"{metrics.get('best_epoch')}"
        )
    model = metrics["model"]
    name = name or default_name(metrics, config)
    root = weights_dir()
    index_path = root / "index.json"
    index = (
        read_json(index_path) if index_path.is_file() else {"format": INDEX_FORMAT, "weights": []}
    )
    old = [e for e in index["weights"] if e["model"] == model and e["name"] == name]
    if old and not force:
        raise ValueError(f"weights {model}:{name} already in {index_path} (use --force)")
    rel = f"{model}/{name}.pt"
    dest = root / rel
    # saved through a buffer: torch.save names the archive after the file it writes, so
    # saving to a temp name would give the same weights another sha256 on every publish
    buf = io.BytesIO()
    torch.save(ckpt["model"], buf)
    size_mb = buf.getbuffer().nbytes / 1e6
    if store is not None:
        dest = Path(store) / rel
        if dest.resolve().is_relative_to(root.resolve()):
            raise ValueError(f"--store {store}: inside {root}, which is committed to git")
    elif size_mb > MAX_WEIGHTS_MB:
        raise ValueError(
            f"{ckpt_path}: {model}'s weights are {size_mb:.1f} MB, over the "
            f"{MAX_WEIGHTS_MB:g} MB a file of {root} (committed to git) may take; keep "
            "them outside git with --store DIR (only the index entry is committed)"
        )
    else:
        # the folder's other files (a replaced entry's own file does not count twice)
        held = sum(f.stat().st_size for f in root.rglob("*.pt") if f != dest) / 1e6
        if held + size_mb > MAX_TOTAL_MB:
            raise ValueError(
                f"{ckpt_path}: {model}'s weights ({size_mb:.1f} MB) would take {root} to "
                f"{held + size_mb:.1f} MB, over its {MAX_TOTAL_MB:g} MB budget (it is "
                "committed to git): keep them outside git with --store DIR"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    manifest = read_json(run / "manifest.json") if (run / "manifest.json").is_file() else {}
    run_rel = results_relative(run)  # the committed index points at the committed run
    entry = {
        "model": model,
        "name": name,
        "file": rel,
        "sha256": file_sha256(dest),
        "model_kwargs": metrics.get("model_kwargs", {}),
        "image_size": config["image_size"],
        "input_scaling": config["input_scaling"],
        "threshold": config["threshold"],
        "precision": metrics.get("precision", "fp32"),
        "store": "repo" if store is None else "external",
        "meta": {
            "bytes": buf.getbuffer().nbytes,
            "run": run_rel,
            "epoch": ckpt["epoch"],
            "config_hash": config.get("config_hash"),
            "code_fingerprint": metrics.get("code_fingerprint"),
            "dataset_fingerprint": (manifest.get("dataset") or {}).get("fingerprint"),
            "split_hash": (manifest.get("dataset") or {}).get("split_hash"),
            # how the run scored its test split: to reproduce its numbers to the last
            # pixel, evaluate in the same memory format and thread count
            "channels_last": manifest.get("channels_last"),
            "threads": config.get("threads"),
            "test": {k: metrics["test"][k] for k in ("dsc", "miou", "acc", "sen", "spe")},
            "params": sum(t.numel() for t in ckpt["model"].values()),
        },
    }
    index["weights"] = [e for e in index["weights"] if e not in old] + [entry]
    index["weights"].sort(key=lambda e: (e["model"], e["name"]))
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".index.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, index_path)
    for e in old:  # a replaced entry's committed file that the new entry does not reuse
        if e.get("store", "repo") == "repo" and (store is not None or e["file"] != rel):
            (root / e["file"]).unlink(missing_ok=True)
    return entry
