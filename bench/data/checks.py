"""Checking a dataset: every problem of every file listed in one pass."""

from __future__ import annotations

from pathlib import Path

from bench.data.decode import _run_jobs
from bench.data.layouts import DataError, Problem, index_dataset


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
    for res in _run_jobs(jobs, workers, "check", progress):
        problems += res["notes"]
        if "error" in res:
            problems.append(Problem(Path(res["path"]), "decode", res["error"].split(": ", 1)[-1]))
    return problems
