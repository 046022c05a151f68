"""Images a run has already seen, in a dataset it is scored on (issue 23, section 1).

``segbench evaluate --run RUN --data OTHER`` scores a trained model on another folder.
When the two folders share images (isic2017-mini is a subset of isic2017-256; a copy
renamed, re-encoded or resized), scoring OTHER would count the run's own training and
validation images as unseen ones. :func:`training_overlap` finds them by three criteria,
the first that applies naming the match:

- ``id``: the same image ID (ISIC IDs are global);
- ``pixel``: the same decoded pixels (sha256, :mod:`bench.data.duplicates`);
- ``phash``: a 256-bit perceptual hash within :data:`bench.data.duplicates.NEAR_THRESHOLD`
  bits (the threshold chosen there on isic2017-256): a re-encoded or resized copy.

They are excluded by default; ``keep_training_images`` keeps them (the record says so).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.data.duplicates import NEAR_THRESHOLD, hash_samples, match_images
from bench.engine.config import split_kwargs
from bench.engine.run_record import dataset_changes


def _hash_cache(cache_root: Path, root: Path) -> Path:
    """The hash cache file of a folder (the same file ``segbench data check`` uses)."""
    tag = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(cache_root) / "hashes" / f"{Path(root).name}-{tag}.json"


def seen_images(cfg: dict[str, Any], recorded: dict[str, Any]) -> tuple[Any, list[str], Path]:
    """The run's training and validation images: ``(index, ids, cache_root)``.

    Read from the run's own dataset folder (``config.json`` ``data``) with its split
    settings; the folder must still hold what the run recorded (``recorded``: the
    manifest's dataset block), else it cannot tell which images the run saw.
    """
    from bench.data.cache import data_identity

    root = cfg.get("data")
    if not root or not Path(root).is_dir():
        raise FileNotFoundError(
            f"the run's dataset folder {root or '(not recorded)'} is not here, so the images "
            "it trained on cannot be excluded from the scored set; score it where that "
            "folder exists, or pass --keep-training-images to score every image (stated in "
            "the result)"
        )
    ident = data_identity(root, **split_kwargs(cfg), cache_dir=cfg.get("cache_dir"))
    changed = dataset_changes(recorded, {**ident, "root": str(root)})
    if changed:
        raise ValueError(
            f"the run's dataset folder {root} changed since it trained ({'; '.join(changed)}), "
            "so the images it trained on are unknown; pass --keep-training-images to score "
            "every image anyway (stated in the result)"
        )
    eval_split = cfg.get("eval_split", "test")
    ids = [
        i for part, part_ids in ident["split_ids"].items() if part != eval_split for i in part_ids
    ]
    return ident["index"], ids, ident["cache_root"]


def training_overlap(
    cfg: dict[str, Any],
    recorded: dict[str, Any],
    prepared: Any,
    ids: Sequence[str],
    *,
    threshold: int = NEAR_THRESHOLD,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """``{eval_id: {"match": run_id, "by": "id"|"pixel"|"phash", "distance": int}}``: the
    images among ``ids`` of ``prepared`` that the run (``cfg``) trained or was selected on."""
    run_index, run_ids, run_cache = seen_images(cfg, recorded)
    by_id = run_index.by_id()
    ref = hash_samples(
        [by_id[i] for i in run_ids],
        cache_file=_hash_cache(run_cache, run_index.root),
        progress=progress,
    )
    eval_by_id = prepared.index.by_id()
    query = hash_samples(
        [eval_by_id[i] for i in ids],
        cache_file=_hash_cache(Path(prepared.cache_path).parent, prepared.root),
        progress=progress,
    )
    out = match_images(query, ref, threshold=threshold)
    seen = set(run_ids)
    for i in set(ids) - set(query):  # an image that could not be hashed still matches by ID
        if i in seen:
            out[i] = {"match": i, "by": "id", "distance": None}
    return dict(sorted(out.items()))


def overlap_record(
    matches: dict[str, dict[str, Any]], n_total: int, kept: bool, threshold: int
) -> dict[str, Any]:
    """The ``training_overlap`` block of an evaluation's metrics.json: of ``n_total``
    images of the split, which the run had seen (``images``, by which criterion), and
    whether they were kept in the score."""
    return {
        "checked": True,
        "criteria": ["id", "pixel", f"phash<={threshold}"],
        "n_total": n_total,
        "n_matched": len(matches),
        "by": dict(Counter(m["by"] for m in matches.values())),
        "kept": kept,
        "n_scored": n_total if kept else n_total - len(matches),
        "images": [{"id": k, **v} for k, v in matches.items()],
    }


def overlap_note(rec: dict[str, Any], eval_dataset: str) -> str | None:
    """One line for the output: how many images were excluded (or kept), by which
    criterion, and the first few IDs."""
    n, n_total = rec["n_matched"], rec["n_total"]
    if not rec.get("checked"):
        return (
            f"--keep-training-images: the run's own dataset is not available, so images of "
            f"{eval_dataset} it trained on could not be looked for; all {n_total} scored"
        )
    if not n:
        return None
    by = ", ".join(f"{v} by {k}" for k, v in sorted(rec["by"].items()))
    first = ", ".join(f"{m['id']} (= {m['match']})" for m in rec["images"][:5])
    more = f" and {n - 5} more" if n > 5 else ""
    if rec["kept"]:
        return (
            f"--keep-training-images: {n} of {n_total} scored images of {eval_dataset} are "
            f"images the run trained or was selected on ({by}): {first}{more}; the score "
            "includes them"
        )
    return (
        f"excluded {n} of {n_total} images of {eval_dataset} that the run trained or was "
        f"selected on ({by}): {first}{more}; scored the other {n_total - n} "
        "(--keep-training-images keeps them)"
    )
