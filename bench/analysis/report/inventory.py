"""Which files under ``results/`` a segbench command writes, and which none does.

A result file that nothing regenerates goes stale silently: a one-seed comparison
written under an older rule kept saying ``significant=True`` beside a table that said the
opposite. :func:`unknown_files` lists every file under the results folder that matches no
pattern of :data:`KNOWN` (the outputs of ``segbench complexity``, ``speed``, ``train``,
``evaluate``, ``baselines``, ``export``, ``compare``, ``paper-gap``, ``benchmark`` and
``report``) or that
this report run did not write in its own folders, and every ``stats/*_pairwise`` file
written under another rule than :data:`bench.analysis.stats.STATS_RULE`. ``segbench
report`` prints them as a warning and lists them in README.md; with ``--strict`` it fails.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

from bench.core.io import read_json

#: (pattern relative to the results folder, the command that writes it)
KNOWN: tuple[tuple[str, str], ...] = (
    ("README.md", "segbench report"),
    ("benchmark.json", "segbench benchmark"),
    ("complexity/complexity.csv", "segbench complexity"),
    ("complexity/complexity.json", "segbench complexity"),
    ("complexity/golden.json", "segbench complexity --update-golden"),
    ("complexity/sweep.csv", "segbench complexity (resolution sweep)"),
    ("complexity/sweep.json", "segbench complexity (resolution sweep)"),
    ("speed/speed-*.csv", "segbench speed"),
    ("speed/speed-*.json", "segbench speed"),
    ("deploy/precision.csv", "segbench export --int8/--bf16"),
    ("deploy/precision.json", "segbench export --int8/--bf16"),
    ("deploy/export.csv", "segbench export"),
    ("deploy/export.json", "segbench export"),
    ("baselines/*/*/metrics.json", "segbench baselines"),
    ("baselines/*/*/per_image.csv", "segbench baselines"),
    ("runs/*/README.md", "written by hand: what a dataset's runs are"),
    ("runs/*/*/*/seed*/config.json", "segbench train"),
    ("runs/*/*/*/seed*/manifest.json", "segbench train"),
    ("runs/*/*/*/seed*/metrics.json", "segbench train"),
    ("runs/*/*/*/seed*/per_image.csv", "segbench train"),
    ("runs/*/*/*/seed*/per_image_original.csv", "segbench train --original-resolution"),
    ("runs/*/*/*/seed*/log.csv", "segbench train"),
    ("runs/*/*/*/seed*/*.pt", "segbench train (checkpoint, not committed)"),
    ("runs/*/*/*/seed*/checkpoints/*", "segbench train (checkpoints, not committed)"),
    ("runs/*/*/*/seed*/events.out.tfevents.*", "segbench train (TensorBoard log)"),
    ("runs/*/*/*/seed*/eval/*/metrics.json", "segbench evaluate --run"),
    ("runs/*/*/*/seed*/eval/*/per_image.csv", "segbench evaluate --run"),
    ("weights/*", "trained weights loadable by name (issue 23)"),
    ("weights/*/*", "trained weights loadable by name (issue 23)"),
    ("paper-gap/*/*.json", "segbench paper-gap"),
    ("tables/sweep_summary.*", "segbench sweep (summary over seeds)"),
    ("stats/*_pairwise.csv", "segbench compare --all"),
    ("stats/*_pairwise.json", "segbench compare --all"),
)

#: never results: editor and tool droppings, run locks
_IGNORED = ("*.lock", "*/__pycache__/*", "*.pyc", ".DS_Store", "*.onnx", "*.onnx.data")

#: folders the report itself writes: a file there that this run did not write is stale
REPORT_FOLDERS = ("tables", "plots")


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    # fnmatch's * crosses "/", so compare segment counts to keep patterns exact
    return any(fnmatch.fnmatchcase(rel, p) and rel.count("/") == p.count("/") for p in patterns)


def _stale_stats(path: Path) -> str | None:
    """Why a ``stats/*_pairwise`` file is stale (None when it was written under the
    current rule)."""
    from bench.analysis.stats import STATS_RULE

    meta = path.with_suffix(".json")
    try:
        rule = read_json(meta).get("rule") if meta.is_file() else None
    except (ValueError, AttributeError):
        rule = None
    if rule == STATS_RULE:
        return None
    return (
        "written under an older comparison rule (no or another 'rule' in "
        f"{meta.name}); rerun `segbench compare --all` or delete it"
    )


def unknown_files(
    root: str | Path, written: Iterable[Path] = (), check_report_folders: bool = True
) -> list[str]:
    """``"<relative path>: <why>"`` for every file under ``root`` that no command writes
    (or, with ``check_report_folders``, that this report run did not write in
    :data:`REPORT_FOLDERS`), sorted."""
    root = Path(root)
    written_rel = {p.resolve() for p in written}
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if _matches(rel, _IGNORED) or any(fnmatch.fnmatchcase(rel, p) for p in _IGNORED):
            continue
        top = rel.split("/", 1)[0]
        if top in REPORT_FOLDERS and "/" in rel and not _matches(rel, (p for p, _ in KNOWN)):
            if check_report_folders and path.resolve() not in written_rel:
                out.append(f"{rel}: in the report's {top}/ but not written by this report run")
            continue
        if not _matches(rel, (p for p, _ in KNOWN)):
            out.append(f"{rel}: no segbench command writes a file of this name")
            continue
        if rel.startswith("stats/"):
            why = _stale_stats(path)
            if why:
                out.append(f"{rel}: {why}")
    return out
