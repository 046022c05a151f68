"""Tables, Pareto plots and ``results/README.md`` from everything under ``results/``.

``segbench report`` reads only result files (the schema in DEVELOPING.md):

- ``complexity/complexity.csv``: parameters and MACs per model;
- ``speed/speed-<device_slug>.csv``: latency / throughput / memory rows per device;
- ``runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/metrics.json``: finished training
  runs; an experiment (recipe, epochs) is never averaged with another: the accuracy
  table has one row per (dataset, model, recipe, epochs), and the per-model summary and
  the Pareto plots use each model's experiment with the most epochs (ties: more seeds;
  never the paper recipe, which selects on the test split);
- ``runs/<dataset>/<model>/<experiment>/seed<k>/eval/<eval dataset>-<split>/metrics.json``
  (optional): a trained run scored on another dataset (``segbench evaluate --run``), for
  the external-validation table;
- ``baselines/<dataset>/<kind>/metrics.json`` (optional): trivial predictors scored on the
  runs' test split (``segbench baselines``);
- ``deploy/precision.csv`` (optional): reduced-precision variants (int8, bf16) against
  eager fp32 with their latency and DSC change (``segbench export --int8 ... --bf16``);

and the papers' figures from the model registry (``model_info(name).reported``).
It writes ``tables/*.{csv,md}``, ``plots/*.{png,svg}`` and ``README.md``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.report.external import label_external_models
from bench.analysis.runs import EXPERIMENT_KEY, find_runs, unfinished_runs
from bench.core.io import read_json

log = logging.getLogger("bench.analysis.report")

RESULTS_DIR = Path("results")


_FP32 = {"fp32", "float32", "torch.float32", "float"}


_CHANNELS_LAST = {"channels_last", "nhwc", "torch.channels_last"}


_OK_STATUS = {"ok", "success", "finished", ""}


# runs/<dataset>/<model>/<experiment>/seed<k>/eval/<eval dataset>-<split>/metrics.json
EVAL_METRICS_GLOB = "runs/*/*/*/seed*/eval/*/metrics.json"


# baselines/<dataset>/<kind>/metrics.json (bench.jobs.baselines)
BASELINE_METRICS_GLOB = "baselines/*/*/metrics.json"


# Complexity columns under the names other writers may use; the first present wins.
_COMPLEXITY_ALIASES: dict[str, list[str]] = {
    "params_total": ["params_total", "params", "parameters"],
    "params_unique": ["params_unique", "unique_params"],
    "params_trainable": ["params_trainable", "trainable_params"],
    "macs": ["macs", "segbench_macs", "macs_segbench"],
    "other_flops": ["other_flops", "segbench_other_flops"],
    "thop_macs": ["thop_macs", "macs_thop", "thop"],
    "fvcore_macs": ["fvcore_macs", "fvcore_flops", "flops_fvcore", "fvcore"],
    "params_thop": ["params_thop", "thop_params"],
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
    external: pd.DataFrame = field(default_factory=pd.DataFrame)  # runs scored elsewhere
    baselines: pd.DataFrame = field(default_factory=pd.DataFrame)  # trivial predictors
    deploy: pd.DataFrame = field(default_factory=pd.DataFrame)  # deploy/precision.csv rows
    benchmark: dict[str, Any] = field(default_factory=dict)  # benchmark.json, if any
    files: list[Path] = field(default_factory=list)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # derived tables
    #: inputs left out or damaged, one line each naming the file (also logged on stderr):
    #: failed / unfinished runs, damaged per_image.csv, evaluations of replaced checkpoints
    problems: list[str] = field(default_factory=list)
    #: failed and unfinished run folders (bench.analysis.runs.unfinished_runs)
    unfinished: list[dict[str, str]] = field(default_factory=list)

    @property
    def devices(self) -> list[str]:
        """Device slugs, accelerators first, then the most recently measured first (the
        primary device is the first: a results folder can keep an older machine's file)."""
        return sorted(self.speed, key=lambda s: (s.startswith("cpu"), -self._last_run(s), s))

    def _last_run(self, slug: str) -> float:
        """When the device's latest speed run started (POSIX seconds; 0 when unrecorded)."""
        runs = self.speed_meta.get(slug, {}).get("runs") or {}
        stamps = [r.get("started") for r in runs.values() if isinstance(r, dict)]
        times = pd.to_datetime(
            pd.Series([t for t in stamps if t], dtype=object), utc=True, errors="coerce"
        )
        return float(times.max().timestamp()) if times.notna().any() else 0.0

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
    for col in ("input_shape", "input_size", "height", "width", "status", "error", "source"):
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


def _metric_block(obj: dict[str, Any], split: str, path: Path) -> dict[str, Any]:
    """The metrics of ``split`` in an evaluation's metrics.json (``segbench evaluate``
    writes them under the split's name; a training run under ``test``)."""
    for key in (split, "test", "metrics"):
        block = obj.get(key)
        if isinstance(block, dict) and "dsc" in block:
            return block
    raise ReportInputError(
        f"{path}: no metrics block with a 'dsc' entry (looked for {split!r}, 'test', 'metrics')"
    )


_SPLIT_SUFFIX = re.compile(r"(?P<dataset>.+)-(?P<split>train|val|test|all)")


def _load_external(
    root: Path, runs: pd.DataFrame, problems: list[str] | None = None
) -> pd.DataFrame:
    """Finished runs scored on another dataset: one row per (run, evaluation folder).

    Columns: the training run's experiment key and seed (from ``runs``), eval_dataset,
    eval_split, dsc, miou, dice_mean (fractions), n_images, checkpoint_epoch,
    checkpoint_status, path. An evaluation of a run that is not a finished run is ignored
    (its in-domain score is unknown). An evaluation whose checkpoint is no longer the
    run's best (:func:`checkpoint_status` ``replaced``: scored before the run went on) is
    left out and named in ``problems``; ``unknown`` (either side recorded nothing to
    compare) is kept.
    """
    paths = sorted(root.glob(EVAL_METRICS_GLOB))
    if not paths or runs.empty:
        return pd.DataFrame()
    by_dir = {str(Path(d)): i for i, d in enumerate(runs["run_dir"])}
    rows = []
    for path in paths:
        idx = by_dir.get(str(path.parents[2]))
        if idx is None:
            continue
        m = _eval_folder(path)
        obj = _read_json(path)
        if not isinstance(obj, dict):
            raise ReportInputError(f"{path}: expected a JSON object")
        block = _metric_block(obj, m["split"], path)
        run = runs.iloc[idx]
        status, why = checkpoint_status(obj, _read_json(path.parents[2] / "metrics.json"))
        if status == "replaced":
            if problems is not None:
                problems.append(f"{path}: left out: {why}; score the run again")
            continue
        rows.append(
            {
                **{k: run[k] for k in (*EXPERIMENT_KEY, "seed")},
                "in_domain_dsc": run["dsc"],
                "eval_dataset": m["dataset"],
                "eval_split": m["split"],
                "eval_dsc": _num(block.get("dsc")),
                "eval_miou": _num(block.get("miou")),
                "eval_dice_mean": _num(block.get("dice_mean")),
                "eval_n_images": block.get("n_images"),
                "checkpoint_epoch": obj.get("checkpoint_epoch"),
                "checkpoint_status": status,
                "command": str(obj.get("command") or ""),
                "path": str(path),
            }
        )
    return pd.DataFrame(rows)


def checkpoint_status(ev: dict[str, Any], run: Any) -> tuple[str, str]:
    """Whether an evaluation scored the weights behind its run's reported result.

    ``("current", "")`` when the checkpoint's sha256 (else its epoch) equals the one the
    finished run's ``metrics.json`` names (``checkpoint.sha256``, else ``best_epoch``);
    ``("replaced", why)`` when it differs; ``("unknown", "")`` when either side recorded
    nothing to compare (evaluations and runs written before these fields existed).
    """
    run = run if isinstance(run, dict) else {}
    ck = run.get("checkpoint") if isinstance(run.get("checkpoint"), dict) else {}
    sha, epoch = ev.get("checkpoint_sha256"), ev.get("checkpoint_epoch")
    if sha and ck.get("sha256"):
        if sha == ck["sha256"]:
            return "current", ""
        return "replaced", (
            f"scored the checkpoint of epoch {epoch} (sha256 {sha[:12]}), not the run's best "
            f"(epoch {ck.get('epoch')}, sha256 {ck['sha256'][:12]})"
        )
    best = run.get("best_epoch")
    if isinstance(epoch, int) and isinstance(best, int):
        if epoch == best:
            return "current", ""
        return (
            "replaced",
            f"scored the checkpoint of epoch {epoch}, not the run's best (epoch {best})",
        )
    return "unknown", ""


def _per_image_problems(runs: pd.DataFrame) -> list[str]:
    """Finished runs whose ``per_image.csv`` the per-image tables cannot fully use:
    missing, unreadable or truncated (fewer rows than the run scored), or with a
    non-numeric / NaN Dice (an image that would silently drop out of a comparison)."""
    out = []
    for run_dir, n in zip(runs["run_dir"], runs["n_images"]):
        path = Path(run_dir) / "per_image.csv"
        if not path.is_file():
            out.append(f"{path}: missing (per-image comparisons leave this seed out)")
            continue
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            out.append(f"{path}: unreadable ({' '.join(str(err).split())})")
            continue
        if "dice" not in df.columns:
            out.append(f"{path}: no 'dice' column")
            continue
        dice = pd.to_numeric(df["dice"], errors="coerce")
        if dice.isna().any():
            ids = df["image_id"] if "image_id" in df.columns else df.iloc[:, 0]
            bad = ids[dice.isna()].astype(str).tolist()
            out.append(f"{path}: Dice missing or NaN for {len(bad)} image(s): {', '.join(bad[:5])}")
        if n is not None and not pd.isna(n) and len(df) != int(n):
            out.append(f"{path}: {len(df)} rows, the run scored {int(n)} images (truncated?)")
    return out


def _eval_folder(path: Path) -> dict[str, str]:
    """Evaluated dataset and split from the folder name ``<eval dataset>-<split>``."""
    name = path.parent.name
    m = _SPLIT_SUFFIX.fullmatch(name)
    if m is None:
        raise ReportInputError(
            f"{path}: evaluation folder {name!r} is not named <dataset>-<split> "
            "(split one of train, val, test, all)"
        )
    return m.groupdict()


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _load_baselines(root: Path) -> pd.DataFrame:
    """Trivial predictors scored on a dataset's test split: one row per (dataset, kind).

    Columns: dataset, kind, split, the test metrics (fractions, as in metrics.json),
    hd95_n_undefined, n_images, command, path.
    """
    rows = []
    for path in sorted(root.glob(BASELINE_METRICS_GLOB)):
        obj = _read_json(path)
        if not isinstance(obj, dict):
            raise ReportInputError(f"{path}: expected a JSON object")
        split = str(obj.get("split") or "test")
        block = _metric_block(obj, split, path)
        row: dict[str, Any] = {
            "dataset": path.parents[1].name,
            "kind": str(obj.get("kind") or path.parent.name),
            "split": split,
        }
        for key, val in block.items():
            if isinstance(val, (int, float)):
                row[key] = float(val)
        row["command"] = str(obj.get("command") or "")
        env = obj.get("environment") if isinstance(obj.get("environment"), dict) else {}
        row["git_commit"] = str(env.get("git_commit") or "")
        row["path"] = str(path)
        rows.append(row)
    return pd.DataFrame(rows)


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
    ppath = root / "deploy" / "precision.csv"
    if ppath.exists():
        res.deploy = _read_csv(ppath, ["model", "variant", "status"])
        res.files.append(ppath)
    res.runs = _load_runs(root)
    if not res.runs.empty:
        res.files.extend(Path(p) for p in res.runs["path"])
        res.problems += _per_image_problems(res.runs)
    res.unfinished = unfinished_runs(root)
    res.problems += [
        f"{u['run_dir']}: {u['status']}, not in the tables"
        + (f" ({u['reason']})" if u["reason"] else "")
        for u in res.unfinished
    ]
    res.external = _load_external(root, res.runs, res.problems)
    res.baselines = _load_baselines(root)
    for frame in (res.external, res.baselines):
        if not frame.empty:
            res.files.extend(Path(p) for p in frame["path"])
    for line in res.problems:  # on stderr as well as in Results.problems
        log.warning("%s", line)
    label_external_models(res)  # models from the user's code: "<name> (external)"
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
    # model -> one sentence per paper-gap record (bench.analysis.report.gap.gap_verdict)
    gap_verdicts: dict[str, list[str]] = field(default_factory=dict)
    # files under results/ that no command writes (bench.analysis.report.inventory)
    unknown: list[str] = field(default_factory=list)
    project_readme: Path | None = None  # the project README whose generated block was updated

    def add_figure(self, group: str, paths: list[Path], caption: str) -> None:
        self.plots += paths
        png = next(p for p in paths if p.suffix == ".png")
        self.figures.append((group, png, caption.replace("\n", "; ")))
