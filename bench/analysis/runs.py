"""Finished runs over seeds: how stable is a number?

:func:`find_runs` reads every finished run under
``results/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/metrics.json``;
:func:`aggregate_runs` gives, per dataset, model and experiment (recipe, epochs: protocols
never mix), the mean, the sample standard deviation (ddof=1; empty for a single seed) and
``n`` over seeds, and :func:`write_summary` stores it as
``results/tables/sweep_summary.{csv,md,json}``. :func:`choose_experiment` picks the
experiment that paired comparisons (:mod:`bench.analysis.stats`) use. Which metrics, with
which units, come from :mod:`bench.engine.metric_table`.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.io import read_json, write_csv, write_json, write_text
from bench.engine.metric_table import METRICS

# Test-split metrics summarised over seeds (keys of metrics.json["test"]).
SUMMARY_METRICS = tuple(m.key for m in METRICS)


_RUN_EXTRAS = ("train_images_per_s", "epoch_time_s")


# Per-run spread over test images (std of per-image Dice / IoU); read, not aggregated.
_PER_IMAGE_SPREAD = ("dice_std", "iou_std")


# Metrics shown as percentages in Markdown (fractions in CSV/JSON, as in metrics.json).
_PERCENT = {m.key for m in METRICS if m.percent}


# runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/ (bench.engine.rundir.run_dir_for)
RUN_METRICS_GLOB = "runs/*/*/*/seed*/metrics.json"


def _metrics_files(results_dir: str | Path) -> list[Path]:
    return sorted(Path(results_dir).glob(RUN_METRICS_GLOB))


def experiment_label(recipe: Any, epochs: Any) -> str:
    """``<recipe>-e<epochs>``, the experiment part of a run folder (display form)."""
    return f"{recipe}-e{epochs}"


#: one experiment: the same configuration except the seed, trained in the same precision
EXPERIMENT_KEY = [
    "dataset",
    "model",
    "recipe",
    "epochs",
    "experiment",
    "precision",
    "experiment_hash",
]


def find_runs(
    results_dir: str | Path = "results",
    dataset: str | None = None,
    model: str | None = None,
    recipe: str | None = None,
    epochs: int | None = None,
) -> pd.DataFrame:
    """One row per finished run (``metrics.json`` with ``status == "finished"``).

    Columns: dataset, model, seed, recipe, epochs, experiment (the run's folder name,
    ``<recipe>-e<epochs>[-<amp>]``), precision (what the run really trained in: ``fp32``,
    ``bf16``, ``fp16`` or ``unknown``), amp_requested, experiment_hash (the configuration
    without the seed, see :func:`run_identity`), config_hash, run_dir, the test metrics of
    :data:`SUMMARY_METRICS` (NaN where a run lacks one), hd95_n_undefined, n_images,
    train_images_per_s, epoch_time_s, image_size, device_name, torch_version, git_commit,
    command, config (the run's ``config.json`` as a dict, or None), environment (the
    ``metrics.json`` environment dict), dataset_fingerprint and split_hash (``unknown``
    when not recorded). A dataset name trained on different data (two fingerprints) is
    two datasets, ``<name>@<fingerprint>``; a run whose folder names another seed than
    its record, or two runs of one experiment with one seed, raise ValueError naming
    them. Failed and unfinished runs: :func:`unfinished_runs`. The arguments other
    than ``results_dir`` keep only matching runs. A malformed ``metrics.json`` or
    ``config.json`` raises ValueError naming the file.
    """
    rows = []
    for path in _metrics_files(results_dir):
        m = read_json(path)  # a malformed file raises ValueError naming it
        if not isinstance(m, dict) or m.get("status") != "finished":
            continue  # a run in progress, an interrupted or failed one: unfinished_runs
        run_dir = path.parent
        # The folder names are where the engine put the run; metrics.json says what it is.
        ds = str(m.get("dataset") or run_dir.parents[2].name)
        mdl = str(m.get("model") or run_dir.parents[1].name)
        rcp = str(m.get("recipe", ""))
        ep = m.get("epochs")
        if (
            (model is not None and mdl != model)
            or (recipe is not None and rcp != recipe)
            or (epochs is not None and ep != epochs)
        ):
            continue
        test = m.get("test") or {}
        env = m.get("environment") or {}
        ident = run_identity(run_dir, m)
        row: dict[str, Any] = {
            "dataset": ds,
            "model": mdl,
            "seed": _seed(run_dir, m, path),
            "recipe": rcp,
            "epochs": ep,
            "experiment": run_dir.parent.name,
            "precision": ident["precision"],
            "amp_requested": ident["amp_requested"],
            "experiment_hash": ident["experiment_hash"],
            "config_hash": m.get("config_hash"),
            "run_dir": str(run_dir),
        }
        for key in (*SUMMARY_METRICS, *_PER_IMAGE_SPREAD):
            row[key] = _float(test.get(key))
        row["hd95_n_undefined"] = _hd95_undefined(run_dir, test)
        row["n_images"] = test.get("n_images")
        for key in _RUN_EXTRAS:
            row[key] = _float(m.get(key))
        row["image_size"] = ident["image_size"]
        row["device_name"] = env.get("device_name", "")
        row["torch_version"] = (env.get("versions") or {}).get("torch", "")
        row["git_commit"] = env.get("git_commit") or ident["git_commit"] or ""
        row["command"] = ident["command"]
        row["config"] = ident["config"]
        row["environment"] = env
        row["dataset_fingerprint"] = ident["dataset_fingerprint"]
        row["split_hash"] = ident["split_hash"]
        rows.append(row)
    _key_by_content(rows)
    _refuse_duplicate_seeds(rows)
    if dataset is not None:  # the name, or one of its content-keyed labels
        rows = [r for r in rows if dataset in (r["dataset"], r["dataset"].split("@")[0])]
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return df.sort_values(
        ["dataset", "model", "recipe", "epochs", "experiment", "experiment_hash", "seed"],
        ignore_index=True,
    )


RUN_COLUMNS = (
    [
        "dataset",
        "model",
        "seed",
        "recipe",
        "epochs",
        "experiment",
        "precision",
        "amp_requested",
        "experiment_hash",
        "config_hash",
        "run_dir",
    ]
    + [*SUMMARY_METRICS, *_PER_IMAGE_SPREAD]
    + ["hd95_n_undefined", "n_images", *_RUN_EXTRAS, "image_size"]
    + ["device_name", "torch_version", "git_commit", "command", "config", "environment"]
    + ["dataset_fingerprint", "split_hash"]
)

#: a run that recorded no dataset fingerprint (written before manifests had one)
UNKNOWN = "unknown"


def _seed(run_dir: Path, m: dict[str, Any], path: Path) -> int:
    """The run's seed from its record; a folder name that says another seed (a copied
    folder) is a contradiction, refused naming the file."""
    folder = run_dir.name.removeprefix("seed")
    if "seed" not in m:
        return int(folder)
    seed = int(m["seed"])
    if folder.lstrip("-").isdigit() and int(folder) != seed:
        raise ValueError(
            f"{path}: records seed {seed} but its folder is {run_dir.name} (a copied run?); "
            f"move it to seed{seed} or remove it"
        )
    return seed


def _key_by_content(rows: list[dict[str, Any]]) -> None:
    """Runs of one dataset name trained on different data (another folder of the same
    name, or files added or removed) are different datasets: where a name has more than
    one recorded fingerprint, each becomes ``<name>@<fingerprint[:8]>`` (runs without a
    fingerprint keep the name: they cannot be told apart)."""
    prints: dict[str, set[str]] = {}
    for r in rows:
        if r["dataset_fingerprint"] != UNKNOWN:
            prints.setdefault(r["dataset"], set()).add(r["dataset_fingerprint"])
    for r in rows:
        if len(prints.get(r["dataset"], ())) > 1 and r["dataset_fingerprint"] != UNKNOWN:
            r["dataset"] = f"{r['dataset']}@{r['dataset_fingerprint'][:8]}"


def _refuse_duplicate_seeds(rows: list[dict[str, Any]]) -> None:
    """Two runs of one experiment with the same seed (a copied folder) would count twice."""
    seen: dict[tuple, str] = {}
    for r in rows:
        key = (r["dataset"], r["model"], r["experiment"], r["experiment_hash"], r["seed"])
        if key in seen:
            raise ValueError(
                f"{r['run_dir']} and {seen[key]} are both seed {r['seed']} of one experiment "
                "(a copied run?): remove one"
            )
        seen[key] = r["run_dir"]


def unfinished_runs(results_dir: str | Path = "results") -> list[dict[str, str]]:
    """Run folders that hold no finished run: ``{"run_dir", "status", "reason"}`` each.

    ``status``: ``failed`` (metrics.json says so, ``reason`` from it), ``running`` (a
    process owns the folder: ``segbench.lock``), ``unfinished`` (no metrics.json: stopped,
    or still training elsewhere) or the status metrics.json records. The report names
    them instead of leaving them out silently.
    """
    from bench.core.lock import LOCK_NAME

    out = []
    for run_dir in sorted(Path(results_dir).glob("runs/*/*/*/seed*")):
        if not run_dir.is_dir():
            continue
        path = run_dir / "metrics.json"
        m: Any = None
        if path.is_file():
            try:
                m = read_json(path)
            except (OSError, ValueError) as err:
                out.append({"run_dir": str(run_dir), "status": "unreadable", "reason": str(err)})
                continue
        status = m.get("status") if isinstance(m, dict) else None
        if status == "finished":
            continue
        if status is None:
            status = "running" if (run_dir / LOCK_NAME).exists() else "unfinished"
        reason = str(m.get("reason") or "") if isinstance(m, dict) else ""
        if not reason and status == "unfinished":
            reason = "no metrics.json (stopped before the end, or still training elsewhere)"
        out.append({"run_dir": str(run_dir), "status": str(status), "reason": reason})
    return out


def _optional_json(path: Path) -> dict[str, Any] | None:
    """A run's side file (config.json, manifest.json): None when absent, ValueError naming
    it when it exists but is not a JSON object."""
    if not path.is_file():
        return None
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return obj


def _precision(amp: Any) -> str:
    return "fp32" if amp in (None, "", "none", "fp32") else str(amp)


def run_identity(run_dir: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """What makes a run's experiment: its precision and its configuration without the seed.

    - ``precision``: the precision the run really trained in. ``metrics.json`` ``amp``
      first, else ``manifest.json`` ``amp`` (both written after a CPU bf16 crash probe
      may have fallen back to fp32), else the requested ``config.json`` ``amp``; ``unknown``
      when no file records it. ``amp_requested`` is what the configuration asked for.
    - ``experiment_hash``: recomputed from ``config.json`` with
      :func:`bench.engine.config.experiment_hash_of` (so runs written before the hash
      existed, or under an older definition, are grouped by today's definition), else the
      ``experiment_hash`` metrics.json recorded, else ``""`` (unknown: such runs are only
      grouped with runs of the same folder).

    Also returns ``config`` (dict or None), ``image_size``, ``command``, ``git_commit``
    (from the manifest), ``dataset_fingerprint`` and ``split_hash`` (metrics.json ``data_identity``,
    else the manifest's ``dataset`` block; :data:`UNKNOWN` for runs that recorded none).
    """
    from bench.engine.config import experiment_hash_of

    run_dir = Path(run_dir)
    config = _optional_json(run_dir / "config.json")
    manifest = _optional_json(run_dir / "manifest.json")
    if "amp" in metrics:
        precision = _precision(metrics["amp"])
    elif manifest is not None and "amp" in manifest:
        precision = _precision(manifest["amp"])
    elif config is not None and "amp" in config:
        precision = _precision(config["amp"])
    else:
        precision = "unknown"
    requested = metrics.get("amp_requested", (config or {}).get("amp"))
    if manifest is not None and "amp_requested" in manifest:
        requested = manifest["amp_requested"]
    if config is not None:
        ehash = experiment_hash_of(config, source=str(run_dir / "config.json"))
    else:
        ehash = str(metrics.get("experiment_hash") or "")
    size = (config or {}).get("image_size")
    if size is None and manifest is not None:
        size = (manifest.get("dataset") or {}).get("image_size")
    ds = (manifest or {}).get("dataset") or {}
    data = metrics.get("data_identity") if isinstance(metrics.get("data_identity"), dict) else {}
    return {
        "dataset_fingerprint": str(data.get("fingerprint") or ds.get("fingerprint") or UNKNOWN),
        "split_hash": str(data.get("split_hash") or ds.get("split_hash") or UNKNOWN),
        "precision": precision,
        "amp_requested": _precision(requested) if requested else None,
        "experiment_hash": ehash,
        "config": config,
        "image_size": int(size) if size is not None else None,
        "command": str((manifest or {}).get("command") or ""),
        "git_commit": (manifest or {}).get("git_commit"),
    }


def _hd95_undefined(run_dir: Path, test: dict[str, Any]) -> float:
    """Test images whose HD95 is undefined (empty prediction or empty mask).

    ``test.hd95_n_undefined`` when the run recorded it; for older runs, the empty cells of
    ``per_image.csv``'s hd95 column; NaN when neither exists or HD95 was not computed.
    """
    n = test.get("hd95_n_undefined")
    if n is not None:
        return float(n)
    path = run_dir / "per_image.csv"
    if not path.is_file() or math.isnan(_float(test.get("hd95_mean"))):
        return math.nan
    try:
        col = pd.read_csv(path, usecols=["hd95"])["hd95"]
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return math.nan  # the per-image loader reports a bad file where it is needed
    return float(pd.to_numeric(col, errors="coerce").isna().sum())


def experiment_settings(runs: pd.DataFrame) -> dict[tuple, str]:
    """What tells experiments of one (dataset, model, recipe, epochs) apart.

    Returns, for each :data:`EXPERIMENT_KEY` tuple, ``"lr=0.0005"``-style text of the
    configuration values in which it differs from another experiment of the same
    (dataset, model, recipe, epochs); ``""`` when it is the only one. ``amp`` is left
    out (the precision is its own column); an experiment without ``config.json`` is
    ``"config not recorded"``.
    """
    from bench.engine.config import RUNTIME_FIELDS, with_later_defaults

    skip = set(RUNTIME_FIELDS) | {"seed", "amp", "config_hash", "experiment_hash"}
    out: dict[tuple, str] = {}
    if runs.empty:
        return out
    for _, grp in runs.groupby(["dataset", "model", "recipe", "epochs"], sort=False):
        exps = list(grp.groupby(EXPERIMENT_KEY, sort=True, dropna=False))
        if len(exps) < 2:
            out.update({key: "" for key, _ in exps})
            continue
        configs = {}
        for key, g in exps:
            cfgs = [c for c in g["config"] if isinstance(c, dict)]
            # a run recorded before a field existed behaved as that field's old value
            configs[key] = with_later_defaults(cfgs[0]) if cfgs else None
        known = [c for c in configs.values() if c is not None]
        keys = sorted({k for c in known for k in c} - skip)
        differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in known}) > 1]
        for key, cfg in configs.items():
            if cfg is None:
                out[key] = "config not recorded"
            else:
                out[key] = ", ".join(f"{k}={_show(cfg.get(k))}" for k in differ)
    return out


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def experiment_differences(runs: pd.DataFrame) -> list[str]:
    """One line per (dataset, model, recipe, epochs) with several experiments, naming what
    differs, e.g. ``"isic2017-mini malunet fair-e20: lr=0.001 vs lr=0.0005"``."""
    settings = experiment_settings(runs)
    lines = []
    for (ds, mdl, rcp, ep), grp in runs.groupby(
        ["dataset", "model", "recipe", "epochs"], sort=True
    ):
        keys = list(grp.groupby(EXPERIMENT_KEY, sort=True, dropna=False).groups)
        if len(keys) < 2:
            continue
        texts = []
        for k in keys:
            t = settings.get(k) or ""
            prec = k[EXPERIMENT_KEY.index("precision")]
            texts.append(f"{t} ({prec})" if t else prec)
        lines.append(f"{ds} {mdl} {experiment_label(rcp, ep)}: " + " vs ".join(texts))
    return lines


def choose_experiment(
    runs: pd.DataFrame,
    dataset: str,
    models: Sequence[str] | None = None,
    recipe: str | None = None,
    epochs: int | None = None,
) -> tuple[str, int]:
    """The experiment (recipe, epochs) to compare ``models`` on, from :func:`find_runs` rows.

    Candidates are the experiments on ``dataset`` that every one of ``models`` has a
    finished run of (``models=None``: experiments with at least two models), narrowed
    by ``recipe`` / ``epochs``. Of those the one with the most epochs wins; ties go to
    more models, then more seeds, then the recipe name. Without ``recipe``, the paper
    recipe and its ablations are never chosen: they select on the test split (ask for
    them by name). ValueError, naming what each model has, when nothing fits.
    """
    from bench.engine.config import is_paper_recipe

    rows = runs[runs["dataset"] == dataset]
    if recipe is None:
        rows = rows[~rows["recipe"].map(lambda r: is_paper_recipe(str(r)))]
    if models is not None:
        rows = rows[rows["model"].isin(list(models))]
    stats = []
    for (rcp, ep), g in rows.groupby(["recipe", "epochs"], sort=True):
        names = set(g["model"])
        ok = names >= set(models) if models is not None else len(names) >= 2
        if ok and recipe in (None, rcp) and epochs in (None, ep):
            stats.append((int(ep), len(names), len(g), str(rcp)))
    if stats:
        ep, _, _, rcp = max(stats, key=lambda t: (t[0], t[1], t[2], _rev(t[3])))
        return rcp, ep
    have = "; ".join(
        f"{m}: {', '.join(sorted(set(g['experiment'])))}"
        for m, g in rows.groupby("model", sort=True)
    )
    wanted = ""
    if recipe is not None or epochs is not None:
        wanted = f" with recipe {recipe or 'any'} and epochs {epochs or 'any'}"
    who = f"models {', '.join(models)}" if models is not None else "two or more models"
    raise ValueError(
        f"{who} share no experiment (recipe, epochs){wanted} on dataset {dataset!r}; "
        f"finished experiments per model: {have or 'none'}. Train them with the same "
        "--recipe and --epochs, or choose a shared one with --recipe/--epochs"
    )


def _rev(text: str) -> tuple[int, ...]:
    """Sort key that makes ``max`` prefer the alphabetically first name."""
    return tuple(-ord(c) for c in text)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def aggregate_runs(results_dir: str | Path = "results") -> pd.DataFrame:
    """Mean, std (ddof=1) and n over seeds per experiment (:data:`EXPERIMENT_KEY`).

    An experiment is one configuration except the seed, trained in one precision: runs
    that differ in anything else (``lr``, ``amp``, ...) are never averaged together.
    Columns: the experiment key, setting (what tells it apart from other experiments of
    the same dataset, model, recipe and epochs, :func:`experiment_settings`), n, seeds
    ("0,1,2"), ``<metric>_mean`` and ``<metric>_std`` for each of :data:`SUMMARY_METRICS`
    plus train_images_per_s and epoch_time_s, then devices and torch_versions (the
    distinct values among the runs, so a table says where its numbers came from). Empty
    (with these columns) when no run has finished.
    """
    runs = find_runs(results_dir)
    values = list(SUMMARY_METRICS) + list(_RUN_EXTRAS)
    cols = EXPERIMENT_KEY + ["setting", "n", "seeds"]
    for v in values:
        cols += [f"{v}_mean", f"{v}_std"]
    cols += ["devices", "torch_versions"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    runs["epochs"] = runs["epochs"].astype("Int64")
    settings = experiment_settings(runs)
    out = []
    for key, grp in runs.groupby(EXPERIMENT_KEY, sort=True, dropna=False):
        row: dict[str, Any] = dict(zip(EXPERIMENT_KEY, key))
        row["setting"] = settings.get(key, "")
        row["n"] = len(grp)
        row["seeds"] = ",".join(str(s) for s in sorted(grp["seed"]))
        for v in values:
            col = grp[v].astype(float)
            row[f"{v}_mean"] = col.mean()
            row[f"{v}_std"] = col.std(ddof=1)  # NaN for one seed: no spread to report
        row["devices"] = "; ".join(sorted({d for d in grp["device_name"] if d}))
        row["torch_versions"] = "; ".join(sorted({t for t in grp["torch_version"] if t}))
        out.append(row)
    return pd.DataFrame(out, columns=cols)


def _pm(mean: float, std: float, percent: bool) -> str:
    if math.isnan(mean):
        return "-"
    scale, digits = (100.0, 2) if percent else (1.0, 2)
    text = f"{mean * scale:.{digits}f}"
    if not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def summary_markdown(df: pd.DataFrame) -> str:
    """A Markdown table of :func:`aggregate_runs` output: percentages, ``mean ± std``."""
    heads = {m.key: m.summary_header for m in METRICS if m.summary_header}
    shown = list(heads)
    table = pd.DataFrame(
        {
            "dataset": df["dataset"],
            "model": df["model"],
            "recipe": df["recipe"],
            "epochs": df["epochs"],
            "precision": df["precision"],
            "setting": df["setting"],
            "n": df["n"],
            **{
                heads[m]: [
                    _pm(a, b, m in _PERCENT)
                    for a, b in zip(df[f"{m}_mean"].astype(float), df[f"{m}_std"].astype(float))
                ]
                for m in shown
            },
        }
    )
    if table.empty:
        return "_no finished runs_\n"
    return table.to_markdown(index=False) + "\n"


def _command() -> str:
    return shlex.join(["segbench", *sys.argv[1:]]) if sys.argv else "segbench"


def write_summary(
    results_dir: str | Path = "results", df: pd.DataFrame | None = None, command: str | None = None
) -> list[Path]:
    """Write :func:`aggregate_runs` to ``<results>/tables/sweep_summary.{csv,md,json}``.

    The JSON and the Markdown header carry the command, machine and versions that
    aggregated the runs; each row also names the devices and torch versions of its runs.
    """
    from bench.core.env import environment

    results_dir = Path(results_dir)
    df = aggregate_runs(results_dir) if df is None else df
    command = command or _command()
    env = environment()
    out = results_dir / "tables"
    md = (
        "# Accuracy over seeds (mean ± std, n seeds)\n\n"
        f"Aggregated by `{command}` on {env['cpu']} "
        f"(torch {env['versions'].get('torch', '?')}, git {env['git_commit']}). "
        "Each row's runs were produced on the devices listed in sweep_summary.csv.\n\n"
        + summary_markdown(df)
    )
    rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return [
        write_csv(out / "sweep_summary.csv", df),
        write_text(out / "sweep_summary.md", md),
        write_json(
            out / "sweep_summary.json", {"command": command, "environment": env, "rows": rows}
        ),
    ]
