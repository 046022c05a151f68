"""Models from outside segbench in the report: labelled "(external)", with their source.

A model registered by the user's own code (entry point, ``--import``, ``bench.api``)
records where it came from in the files the harness writes: the ``source`` column of
``complexity.csv`` and ``model_source`` in a run's ``metrics.json`` (empty for the models
segbench ships). :func:`label_external_models` reads those and renames such a model, in
every frame the report draws from, to ``"<name> (external)"`` (:func:`model_label`), so
every table row and plot marker of it says so; :func:`source_lines` lists the sources
under the report's inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "EXTERNAL_SUFFIX",
    "label_external_models",
    "model_label",
    "model_sources",
    "source_lines",
]

EXTERNAL_SUFFIX = " (external)"


def model_label(name: str, sources: dict[str, str]) -> str:
    """``name`` as the report shows it: with " (external)" when it has a source."""
    return f"{name}{EXTERNAL_SUFFIX}" if sources.get(name) else name


def model_sources(res: Any) -> dict[str, str]:
    """Registry name -> source of every external model in the loaded results."""
    sources: dict[str, str] = {}
    cx = res.complexity
    if "source" in cx and "model" in cx:
        for name, src in zip(cx["model"].astype(str), cx["source"]):
            if isinstance(src, str) and src.strip():
                sources[name] = src.strip()
    for df in res.speed.values():
        if "source" in df and "model" in df:
            for name, src in zip(df["model"].astype(str), df["source"]):
                if isinstance(src, str) and src.strip():
                    sources.setdefault(name, src.strip())
    if "path" in res.runs and "model" in res.runs:
        for name, path in zip(res.runs["model"].astype(str), res.runs["path"]):
            try:
                src = json.loads(Path(path).read_text()).get("model_source") or ""
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(src, str) and src.strip():
                sources.setdefault(name, src.strip())
    return sources


def _relabel(df: pd.DataFrame, sources: dict[str, str]) -> pd.DataFrame:
    if df.empty or "model" not in df:
        return df
    df = df.copy()
    df["model"] = [model_label(str(m), sources) for m in df["model"]]
    return df


def label_external_models(res: Any) -> dict[str, str]:
    """Rename external models in every frame of ``res`` (a loaded ``Results``); returns the
    name -> source mapping (also kept as ``res.cache["model_sources"]``)."""
    sources = model_sources(res)
    if sources:
        res.complexity = _relabel(res.complexity, sources)
        res.speed = {slug: _relabel(df, sources) for slug, df in res.speed.items()}
        res.runs = _relabel(res.runs, sources)
        res.external = _relabel(res.external, sources)
        res.deploy = _relabel(res.deploy, sources)
    res.cache["model_sources"] = sources
    return sources


def source_lines(res: Any) -> list[str]:
    """Input lines naming each external model's source (none when there is none)."""
    sources = res.cache.get("model_sources") or {}
    return [
        f"- external model `{name}`: from {src} (not shipped with segbench)"
        for name, src in sorted(sources.items())
    ]
