"""Checking a dataset: every problem of every file listed in one pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.decode import run_decode_jobs
from bench.data.layouts import DataError, DatasetIndex, Problem, dataset_name, index_dataset


def check_dataset(
    root: str | Path,
    *,
    mask_suffix: str | None = None,
    binarize: bool = False,
    workers: int = 2,
    progress: bool = False,
) -> list[Problem]:
    """Every problem under ``root`` in one pass: layout, pairing, decoding, sizes, mask values."""
    root = Path(root)
    try:
        index = index_dataset(root, mask_suffix=mask_suffix, strict=False)
    except DataError as err:
        return [Problem(root, "layout", str(err).split(": ", 1)[-1])]
    problems = list(index.problems)
    jobs = [(s, None, binarize, False) for s in index.samples if s.mask is not None]
    for res in run_decode_jobs(jobs, workers, "check", progress):
        problems += res["notes"]
        if "error" in res:
            problems.append(Problem(Path(res["path"]), "decode", res["error"].split(": ", 1)[-1]))
    return problems


@dataclass
class DatasetStats:
    """Sizes and lesion fractions of a dataset's decoded pairs (``segbench data info``)."""

    n: int
    min_hw: tuple[int, int]
    max_hw: tuple[int, int]
    median_hw: tuple[int, int]
    lesion_fraction: dict[str, float]  # mean, median, min, max of the mask's foreground share
    empty_masks: int
    errors: list[str]  # pairs that could not be decoded, with their path


def dataset_stats(
    index: DatasetIndex, *, binarize: bool = False, workers: int = 2, progress: bool = False
) -> DatasetStats:
    """Decode every pair of ``index`` once and summarise sizes and lesion fractions."""
    jobs = [(s, None, binarize, False) for s in index.samples]
    rows, errors = [], []
    for res in run_decode_jobs(jobs, workers, "info", progress):
        if "error" in res:
            errors.append(res["error"])
        else:
            rows.append((*res["orig"], res["fg"]))
    if not rows:
        return DatasetStats(0, (0, 0), (0, 0), (0, 0), {}, 0, errors)
    arr = np.array(rows, dtype=float)
    fg = arr[:, 2]
    return DatasetStats(
        n=len(rows),
        min_hw=(int(arr[:, 0].min()), int(arr[:, 1].min())),
        max_hw=(int(arr[:, 0].max()), int(arr[:, 1].max())),
        median_hw=(int(np.median(arr[:, 0])), int(np.median(arr[:, 1]))),
        lesion_fraction={
            "mean": float(fg.mean()),
            "median": float(np.median(fg)),
            "min": float(fg.min()),
            "max": float(fg.max()),
        },
        empty_masks=int((fg == 0).sum()),
        errors=errors,
    )


def duplicate_report(
    root: str | Path,
    *,
    split_files: Sequence[str | Path] = (),
    threshold: int | None = None,
    mask_suffix: str | None = None,
    workers: int = 2,
    progress: bool = False,
) -> dict[str, Any]:
    """Duplicate images of a dataset folder and the splits they leak across.

    ``{"groups": [...], "threshold": int, "splits": {name: [leaking group, ...]}}`` where
    the splits are the layout's official one (if any), the default split files segbench
    made for this folder (if they exist), and every file in ``split_files``.
    """
    from bench.core.io import read_json
    from bench.data.cache import split_file_for
    from bench.data.duplicates import NEAR_THRESHOLD, find_duplicates, straddling
    from bench.data.home import cache_home
    from bench.data.splits import SPLIT_MODES

    thr = NEAR_THRESHOLD if threshold is None else threshold
    index = index_dataset(Path(root), mask_suffix=mask_suffix)
    groups, _ = find_duplicates(
        index, threshold=thr, cache_root=cache_home(), workers=workers, progress=progress
    )
    splits: dict[str, dict[str, list[str]]] = {}
    official = index.official_split_ids()
    if official:
        splits[f"official ({index.layout.name} layout)"] = official
    candidates = []
    for mode in SPLIT_MODES:
        try:
            candidates.append(
                split_file_for(Path(root), dataset_name(index.layout, Path(root)), index, mode)
            )
        except DataError:  # e.g. "official" on a layout without an official test part
            continue
    for path in [*dict.fromkeys(candidates), *map(Path, split_files)]:
        if not path.is_file():
            if path in map(Path, split_files):
                raise DataError(f"--split-file {path}: no such file")
            continue
        try:
            saved = read_json(path)["splits"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a segbench split file ({err})") from None
        splits[str(path)] = {k: list(v) for k, v in saved.items()}
    return {
        "threshold": thr,
        "groups": [g.as_dict() for g in groups],
        "splits": {name: straddling(groups, s) for name, s in splits.items()},
    }
