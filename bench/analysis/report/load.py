"""Tables, Pareto plots and ``results/README.md`` from everything under ``results/``.

``segbench report`` reads only result files (the schema in DEVELOPING.md):

- ``complexity/complexity.csv``: parameters and MACs per model;
- ``speed/speed-<device_slug>.csv``: latency / throughput / memory rows per device;
- ``runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/metrics.json``: finished training
  runs; an experiment (recipe, epochs) is never averaged with another: the accuracy
  table has one row per (dataset, model, recipe, epochs), and the per-model summary and
  the Pareto plots use each model's experiment with the most epochs (ties: more seeds);
- ``stats/*.csv`` (optional): paired significance tests, shown when present;

and the papers' figures from the model registry (``model_info(name).reported``).
It writes ``tables/*.{csv,md}``, ``plots/*.{png,svg}`` and ``README.md``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.runs import find_runs
from bench.core.io import read_json

RESULTS_DIR = Path("results")


_FP32 = {"fp32", "float32", "torch.float32", "float"}


_CHANNELS_LAST = {"channels_last", "nhwc", "torch.channels_last"}


_OK_STATUS = {"ok", "success", "finished", ""}


# runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/ (bench.engine.rundir.run_dir_for)
_EXPERIMENT = ["dataset", "model", "recipe", "epochs"]


# Complexity columns under the names other writers may use; the first present wins.
_COMPLEXITY_ALIASES: dict[str, list[str]] = {
    "params_total": ["params_total", "params", "parameters"],
    "params_unique": ["params_unique", "unique_params"],
    "params_trainable": ["params_trainable", "trainable_params"],
    "macs": ["macs", "segbench_macs", "macs_segbench"],
    "other_flops": ["other_flops", "segbench_other_flops"],
    "thop_macs": ["thop_macs", "macs_thop", "thop"],
    "fvcore_macs": ["fvcore_macs", "fvcore_flops", "flops_fvcore", "fvcore"],
    "activation_bytes": ["activation_bytes"],
}


class ReportInputError(ValueError):
    """A result file the report cannot use; the message names the file and the problem."""


@dataclass
class Results:
    """Everything the report reads, as data frames (raw, as written by the harness)."""

    root: Path
    complexity: pd.DataFrame = field(default_factory=pd.DataFrame)
    complexity_meta: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, pd.DataFrame] = field(default_factory=dict)  # device slug -> rows
    speed_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per finished run
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    benchmark: dict[str, Any] = field(default_factory=dict)  # benchmark.json, if any
    files: list[Path] = field(default_factory=list)

    @property
    def devices(self) -> list[str]:
        """Device slugs, accelerators first (the primary device is the first)."""
        return sorted(self.speed, key=lambda s: (s.startswith("cpu"), s))

    @property
    def primary_device(self) -> str | None:
        return self.devices[0] if self.devices else None

    def device_name(self, slug: str) -> str:
        df = self.speed.get(slug)
        if df is not None and "device_name" in df and df["device_name"].notna().any():
            return str(df["device_name"].dropna().iloc[0])
        env = self.speed_meta.get(slug, {}).get("environment", {})
        return str(env.get("device_name", slug))

    @property
    def models(self) -> list[str]:
        names: set[str] = set()
        if "model" in self.complexity:
            names.update(self.complexity["model"].astype(str))
        for df in self.speed.values():
            names.update(df["model"].astype(str))
        if "model" in self.runs:
            names.update(self.runs["model"].astype(str))
        return sorted(names)


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReportInputError(f"{path}: not a readable CSV file ({err})") from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ReportInputError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}"
        )
    return df


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise ReportInputError(f"{path}: not valid JSON ({err})") from err


def _json_meta(path: Path) -> dict[str, Any]:
    """Provenance (command, environment, ...) from a result JSON, without its data rows."""
    if not path.exists():
        return {}
    obj = _read_json(path)
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if not isinstance(v, list) or k in ("command", "argv")}


def _normalise_complexity(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = pd.DataFrame({"model": df["model"].astype(str)})
    for key, names in _COMPLEXITY_ALIASES.items():
        col = next((n for n in names if n in df.columns), None)
        if col is not None:
            out[key] = pd.to_numeric(df[col], errors="coerce")
    if "params_total" not in out or "macs" not in out:
        raise ReportInputError(
            f"{path}: needs a parameter count and a MAC count column (e.g. params_total, macs); "
            f"found {', '.join(map(str, df.columns))}"
        )
    for col in ("input_shape", "input_size", "height", "width", "status", "error"):
        if col in df.columns:
            out[col] = df[col]
    # Should the file hold several input sizes per model, the tables use the 256x256
    # rows (the papers' size), else the last row per model.
    if out["model"].duplicated().any():
        if "input_shape" in out:
            keep = out["input_shape"].astype(str).str.contains("256, 256|256x256")
            if keep.any():
                out = out[keep]
        out = out.drop_duplicates("model", keep="last")
    return out.reset_index(drop=True)


def _load_runs(root: Path) -> pd.DataFrame:
    """Finished runs, one row each, read by :func:`bench.analysis.runs.find_runs` (the one loader
    of ``metrics.json``); ``path`` is the metrics file the row came from."""
    try:
        runs = find_runs(root)
    except ValueError as err:  # malformed metrics.json: the message names it
        raise ReportInputError(str(err)) from err
    if runs.empty:
        return pd.DataFrame()
    runs["path"] = [str(Path(d) / "metrics.json") for d in runs["run_dir"]]
    no_dsc = runs[runs["dsc"].isna()]
    if not no_dsc.empty:
        raise ReportInputError(f"{no_dsc['path'].iloc[0]}: status 'finished' but no test.dsc entry")
    runs["epochs"] = pd.to_numeric(runs["epochs"], errors="coerce").fillna(-1).astype(int)
    runs["recipe"] = runs["recipe"].replace("", "?")
    return runs


def load_results(root: str | Path = RESULTS_DIR) -> Results:
    """Read every result file under ``root``; a malformed file raises :class:`ReportInputError`."""
    root = Path(root)
    if not root.is_dir():
        raise ReportInputError(f"results directory {root} does not exist")
    res = Results(root=root)
    cpath = root / "complexity" / "complexity.csv"
    if cpath.exists():
        res.complexity = _normalise_complexity(_read_csv(cpath, ["model"]), cpath)
        res.complexity_meta = _json_meta(cpath.with_suffix(".json"))
        res.files.append(cpath)
    for spath in sorted((root / "speed").glob("speed-*.csv")):
        df = _read_csv(spath, ["model", "mode", "batch_size", "median_ms"])
        if df.empty:
            continue
        df["model"] = df["model"].astype(str)
        slug = spath.stem.removeprefix("speed-")
        res.speed[slug] = df
        res.speed_meta[slug] = _json_meta(spath.with_suffix(".json"))
        res.files.append(spath)
    bpath = root / "benchmark.json"
    if bpath.exists():
        obj = _read_json(bpath)
        res.benchmark = obj if isinstance(obj, dict) else {}
    res.runs = _load_runs(root)
    if not res.runs.empty:
        res.files.extend(Path(p) for p in res.runs["path"])
    stat_frames = []
    for path in sorted((root / "stats").glob("*.csv")):
        df = _read_csv(path, [])
        # bench.analysis.stats names its files <dataset>_<recipe>-e<epochs>_pairwise.csv
        name = path.stem.removesuffix("_pairwise")
        m = re.fullmatch(r"(?P<dataset>.+)_(?P<recipe>[^_]+)-e(?P<epochs>\d+)", name)
        found = m.groupdict() if m else {"dataset": name}
        for key, val in found.items():
            if key not in df:
                df[key] = int(val) if key == "epochs" else val
        stat_frames.append(df.assign(source=str(path)))
        res.files.append(path)
    if stat_frames:
        res.stats = pd.concat(stat_frames, ignore_index=True)
    return res


@dataclass
class ReportOutput:
    tables: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    readme: Path | None = None
    markdown: dict[str, str] = field(default_factory=dict)  # table name -> Markdown
    figures: list[tuple[str, Path, str]] = field(default_factory=list)  # (group, png, caption)
    # dataset -> which experiment (recipe, epochs, seeds) each measured point shows
    point_sources: dict[str, list[str]] = field(default_factory=dict)

    def add_figure(self, group: str, paths: list[Path], caption: str) -> None:
        self.plots += paths
        png = next(p for p in paths if p.suffix == ".png")
        self.figures.append((group, png, caption.replace("\n", "; ")))
