"""Sweeps: models x datasets x seeds (x input sizes), one engine run per cell, via submitit.

A sweep is a YAML file (see ``bench/jobs/sweeps/example.yaml``)::

    name: isic2017-main          # names the log folder (default: the file's stem)
    recipe: fair                 # engine recipe (bench.engine.config.TrainConfig.from_recipe)
    models: [malunet, egeunet, unet]   # names or wildcard patterns of the registry
    import: [my_models.py]       # optional: modules or .py files (relative to this file)
                                 # whose @register_model adds models (as --import)
    datasets:
      - {name: isic2017, root: ../data/isic2017}   # root relative to this file
    seeds: [0, 1, 2]
    input_sizes: [256]           # optional; more than one size gives each its own dataset label
    overrides: {epochs: 300}     # any TrainConfig field
    slurm: {partition: gpu, time: 720, gpus_per_task: 1, array_parallelism: 8}

Every cell is one ``bench.engine.train.run_training`` call with its own run directory
(``results/runs/<dataset>/<model>/<recipe>-e<epochs>/seed<k>/``). Before anything is
submitted, cells whose ``metrics.json`` is finished with the same config hash are
skipped; the others run, and an interrupted cell resumes from its last checkpoint (the
engine does that). A failed cell is reported with its log files and does not stop the
others. At the end a table lists every cell with its status and run directory or log
path, and the accuracy over seeds (``results/tables/sweep_summary.*``) and the paired
statistics per dataset of the sweep's experiment
(``results/stats/<dataset>_<recipe>-e<epochs>_pairwise.*``, see :mod:`bench.analysis.stats`) are
refreshed.

``--only PATTERN`` (repeatable) runs a subset, e.g. the seeds of one model
(``--only '*/smp_unet_resnet34/*'``) before those of the next, without editing the file:
the run folders, config hashes and experiments are those of the whole sweep (see
:func:`select_cells`).

Executors (all submitit, no scheduler of our own):

* ``--executor local`` (default): ``submitit.LocalExecutor``, each cell a subprocess,
  ``--parallel N`` of them at a time (one after another by default). With GPUs present
  each running cell gets one GPU, the least busy.
* ``--executor debug``: ``submitit.DebugExecutor``, cells run in this process one after
  another (for debugging; a failing cell is logged and reported, never dropped into pdb).
* ``--executor slurm``: ``submitit.SlurmExecutor``, ONE Slurm job array with one task
  per cell that is not finished yet, ``--array-parallelism K`` running at once (``%K``).

Running the same sweep on a Slurm cluster
-----------------------------------------
(In full, with what is verified against a real Slurm cluster: ``docs/cluster.md``.)

1. Put the checkout, the data and the virtual environment on a file system that the
   login node and the compute nodes share (the job runs the same ``python`` binary
   that submitted it, and workers import ``bench`` from the checkout).
2. On the login node, in the checkout, with the environment active::

       segbench sweep bench/jobs/sweeps/example.yaml --executor slurm --partition gpu \
           --gpus-per-task 1 --cpus-per-task 8 --mem 32G --time 720 --array-parallelism 8

   ``--dry-run`` first shows the cells and what would be skipped. Defaults for these
   options can live in the YAML's ``slurm:`` section; the command line wins.
3. The command waits and prints the summary when the array is done. With ``--no-wait``
   it prints the job ids and log paths and returns; ``squeue -u $USER`` / ``sacct`` show
   progress and ``scancel <jobid>`` stops the array. Logs are in
   ``results/sweeps/<name>/logs/<jobid>_<task>/`` (``--logs`` to change).
4. Cells that reach the time limit or are preempted are requeued by submitit (up to 3
   times) and resume from their last checkpoint. Running the same command again later
   submits only the cells that are unfinished (e.g. failed ones); cells whose job of an
   earlier ``--no-wait`` submission ``sacct`` still reports as pending or running are
   not submitted twice (``results/sweeps/<name>/cells.csv`` remembers the job ids).
   After a ``--no-wait`` array is done, run the command again to collect the results
   and refresh the summary tables.
5. A cell whose job is cancelled (``scancel``) is reported ``cancelled`` and the command
   exits non-zero; ``cells.csv`` records each cell's job id and ``sacct`` state.

Data caches: the first cell of a dataset builds its preprocessing cache; cells running
at the same time may build it twice but never see a half-written one (``bench.data``
renames a finished cache into place).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.names import expand_models

_TOP_KEYS = {
    "import",
    "name",
    "recipe",
    "models",
    "datasets",
    "seeds",
    "input_sizes",
    "overrides",
    "slurm",
}


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepError(ValueError):
    """A sweep file or sweep argument is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class SlurmOptions:
    """Options of the Slurm job array (``None`` leaves the cluster's default)."""

    partition: str | None = None
    time: int = 1440  # minutes per task
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    array_parallelism: int = 256  # submitit's default
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines run before the task, e.g. "source .venv/bin/activate"

    def to_submitit(self) -> dict[str, Any]:
        """Keyword arguments of ``SlurmExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "time": int(self.time),
            "array_parallelism": int(self.array_parallelism),
            "job_name": "segbench-sweep",
        }
        for key in SLURM_KEYS:
            value = getattr(self, key)
            if value is not None and key not in params:
                params[key] = value
        if self.setup:
            params["setup"] = list(self.setup)
        return params


#: The Slurm options a sweep file's ``slurm:`` section and ``segbench sweep`` flags may set
#: (besides ``setup``); the one list both read.
SLURM_KEYS = tuple(f.name for f in dataclasses.fields(SlurmOptions) if f.name != "setup")
_SLURM_INT_KEYS = ("time", "array_parallelism", "gpus_per_task", "cpus_per_task")


def slurm_options(
    sweep: SweepConfig, overrides: dict[str, Any] | None = None, setup: Sequence[str] | None = None
) -> SlurmOptions:
    """The sweep file's ``slurm:`` section with ``overrides`` (None values ignored) on top.

    ``setup`` lines, when given, replace the file's. Integer options must be positive.
    """
    merged: dict[str, Any] = dict(sweep.slurm)
    for key, value in (overrides or {}).items():
        if key not in SLURM_KEYS:
            raise SweepError(f"unknown slurm option {key!r}; allowed: {', '.join(SLURM_KEYS)}")
        if value is not None:
            merged[key] = value
    if setup:
        merged["setup"] = list(setup)
    if isinstance(merged.get("setup"), str):
        merged["setup"] = [merged["setup"]]
    merged["setup"] = tuple(merged.get("setup") or ())
    for key in _SLURM_INT_KEYS:
        v = merged.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SweepError(f"slurm option {key}: expected a positive integer, got {v!r}")
    return SlurmOptions(**merged)


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: what ``bench.engine.config.TrainConfig.from_recipe`` receives."""

    model: str
    dataset: str  # label of the run folder: results/runs/<dataset>/...
    data_root: str
    seed: int
    input_size: int | None = None
    recipe: str = "fair"
    overrides: tuple[tuple[str, Any], ...] = ()  # TrainConfig (field, value) pairs, sorted

    @property
    def experiment(self) -> str:
        """``<recipe>-e<epochs>``: the experiment folder of this cell's run."""
        over = dict(self.overrides)
        return _experiment(self.recipe, over.get("recipe"), over.get("epochs"), over.get("amp"))

    @property
    def label(self) -> str:
        """``<dataset>/<model>/<recipe>-e<epochs>/seed<k>``, as in the run folder's path."""
        return f"{self.dataset}/{self.model}/{self.experiment}/seed{self.seed}"

    def config(self, **runtime: Any) -> Any:
        """The engine's ``TrainConfig`` for this cell (validates every field).

        ``runtime`` sets fields that do not enter the config hash (e.g. ``threads``).
        """
        from bench.engine.config import TrainConfig

        kwargs: dict[str, Any] = dict(self.overrides)
        kwargs.update(model=self.model, data=self.data_root, dataset=self.dataset, seed=self.seed)
        if self.input_size is not None:
            kwargs["image_size"] = self.input_size
        kwargs.update(runtime)
        return TrainConfig.from_recipe(self.recipe, **kwargs)


@functools.lru_cache(maxsize=64)
def _experiment(recipe: str, name: Any, epochs: Any, amp: Any = None) -> str:
    from bench.engine.config import TrainConfig
    from bench.engine.rundir import experiment_name

    pairs = (("recipe", name), ("epochs", epochs), ("amp", amp))
    over = {k: v for k, v in pairs if v is not None}
    try:
        cfg = TrainConfig.from_recipe(recipe, **over)
    except (TypeError, ValueError, FileNotFoundError):
        return f"{recipe}-e?"  # a bad recipe is reported when the cell's config is built
    return experiment_name(cfg.recipe, cfg.epochs, cfg.amp)


@dataclass(frozen=True)
class SweepConfig:
    name: str
    path: Path | None
    recipe: str
    models: tuple[str, ...]
    datasets: tuple[tuple[str, str], ...]  # (label, absolute root)
    seeds: tuple[int, ...]
    input_sizes: tuple[int | None, ...] = (None,)
    overrides: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)
    imports: tuple[str, ...] = ()  # what `import:` imported (absolute paths, module names)

    def cells(self) -> list[Cell]:
        """Every cell, dataset-major then model, size, seed (the order of the job array)."""
        several = len(self.input_sizes) > 1
        out = []
        for ds, root in self.datasets:
            for model in self.models:
                for size in self.input_sizes:
                    label = f"{ds}-{size}px" if several else ds
                    for seed in self.seeds:
                        out.append(
                            Cell(
                                model=model,
                                dataset=label,
                                data_root=root,
                                seed=seed,
                                input_size=size,
                                recipe=self.recipe,
                                overrides=tuple(sorted(self.overrides.items())),
                            )
                        )
        return out


def select_cells(cells: Sequence[Cell], patterns: Sequence[str] | None) -> list[Cell]:
    """The cells whose label matches any of ``patterns``, in sweep order (all without any).

    A pattern is shell-style (``fnmatch``) against the whole label
    ``<dataset>/<model>/<experiment>/seed<k>``, e.g. ``*/smp_unet_resnet34/*`` or
    ``*/seed1``; a pattern without ``/`` matches one part of the label, so ``unet`` is the
    model ``unet`` (not every UNet) and ``seed1`` the seed. A pattern that matches no cell
    is an error that lists the labels: a typo must not run nothing and exit 0.
    """
    if not patterns:
        return list(cells)

    def hit(pattern: str, label: str) -> bool:
        if "/" in pattern:
            return fnmatch.fnmatchcase(label, pattern)
        return any(fnmatch.fnmatchcase(part, pattern) for part in label.split("/"))

    for pattern in patterns:
        if not any(hit(pattern, c.label) for c in cells):
            labels = ", ".join(c.label for c in cells)
            raise SweepError(f"--only {pattern!r} matches no cell of the sweep; cells: {labels}")
    return [c for c in cells if any(hit(p, c.label) for p in patterns)]


def _int_list(value: Any, where: str, minimum: int) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise SweepError(f"{where}: expected integers >= {minimum}, got {v!r}")
        out.append(v)
    if not out:
        raise SweepError(f"{where}: empty list")
    if len(set(out)) != len(out):
        raise SweepError(f"{where}: repeated values in {out}")
    return tuple(out)


def _expand_models(entries: Any, where: str) -> tuple[str, ...]:
    from models import UnknownModelError

    if not entries or not isinstance(entries, (str, list)):
        raise SweepError(f"{where}: expected a non-empty list of model names or patterns")
    try:
        return tuple(expand_models(entries, where))
    except UnknownModelError as err:
        raise SweepError(f"{where}: {err}") from None
    except ValueError as err:
        raise SweepError(str(err)) from None


def _imports(value: Any, where: str, base: Path) -> tuple[str, ...]:
    """Import the ``import:`` entries (a path relative to the sweep file, or a module) and
    export them to ``SEGBENCH_IMPORT``, so the cells' worker processes import them too."""
    from models import import_models
    from models.external import is_path

    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise SweepError(f"{where}: expected a module name, a .py path or a list of them")
    specs = [str((base / v).resolve()) if is_path(v) else v for v in items]
    try:
        return tuple(import_models(specs, where=where, export=True))
    except ValueError as err:  # ModelImportError, a name clash
        raise SweepError(str(err)) from None


def _datasets(value: Any, where: str, base: Path) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):  # {name: root, ...}
        value = [{"name": k, "root": v} for k, v in value.items()]
    if not isinstance(value, list) or not value:
        raise SweepError(f"{where}: expected a non-empty list of {{name, root}} entries")
    out: list[tuple[str, str]] = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"root": entry}
        if not isinstance(entry, dict) or "root" not in entry:
            raise SweepError(f"{where}[{i}]: expected {{name: ..., root: ...}}, got {entry!r}")
        extra = set(entry) - {"name", "root"}
        if extra:
            raise SweepError(
                f"{where}[{i}]: unknown key(s) {', '.join(sorted(extra))} (allowed: name, root)"
            )
        root = Path(os.path.expandvars(os.path.expanduser(str(entry["root"]))))
        root = (base / root).resolve() if not root.is_absolute() else root
        if not root.is_dir():
            raise SweepError(f"{where}[{i}]: data root {root} is not a folder")
        name = str(entry.get("name") or root.name)
        if not _NAME_RE.match(name):
            raise SweepError(f"{where}[{i}]: dataset name {name!r} must be a plain folder name")
        if name in {n for n, _ in out}:
            raise SweepError(f"{where}: dataset name {name!r} appears twice")
        out.append((name, str(root)))
    return tuple(out)


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML; every error names the file and the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return sweep_from_dict(raw, source=path)


def sweep_from_dict(raw: dict[str, Any], source: Path | None = None) -> SweepConfig:
    """Validate a sweep given as a dict (relative data roots: the source file's folder)."""
    where = str(source) if source else "sweep"
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise SweepError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}"
        )
    for key in ("models", "datasets"):
        if key not in raw:
            raise SweepError(f"{where}: missing required key {key!r}")
    base = source.parent if source else Path.cwd()
    name = str(raw.get("name") or (source.stem if source else "sweep"))
    if not _NAME_RE.match(name):
        raise SweepError(f"{where}: name {name!r} must be a plain folder name")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SweepError(f"{where}: overrides: expected a mapping of TrainConfig fields")
    owned = {"model": "models", "data": "datasets", "dataset": "datasets", "seed": "seeds"}
    if raw.get("input_sizes") is not None:
        owned["image_size"] = "input_sizes"
    for key, instead in owned.items():
        if key in overrides:
            raise SweepError(f"{where}: overrides.{key}: set by the sweep itself (use {instead})")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SweepError(f"{where}: slurm: expected a mapping of Slurm options")
    bad = sorted(set(slurm) - {f.name for f in dataclasses.fields(SlurmOptions)})
    if bad:
        raise SweepError(
            f"{where}: slurm: unknown option(s) {', '.join(bad)}; allowed: "
            + ", ".join(f.name for f in dataclasses.fields(SlurmOptions))
        )
    sizes = raw.get("input_sizes")
    recipe = raw.get("recipe", "fair")
    if not isinstance(recipe, str) or not recipe:
        raise SweepError(f"{where}: recipe: expected a recipe name, got {recipe!r}")
    imports = _imports(raw.get("import"), f"{where}: import", base)  # before models: names
    cfg = SweepConfig(
        name=name,
        path=source,
        recipe=recipe,
        models=_expand_models(raw["models"], f"{where}: models"),
        datasets=_datasets(raw["datasets"], f"{where}: datasets", base),
        seeds=_int_list(raw.get("seeds", [42]), f"{where}: seeds", 0),
        input_sizes=(None,) if sizes is None else _int_list(sizes, f"{where}: input_sizes", 1),
        overrides=dict(overrides),
        slurm=dict(slurm),
        imports=imports,
    )
    # Building every cell's TrainConfig checks the recipe and the overrides now, not
    # hours later on a compute node.
    for cell in cfg.cells():
        try:
            cell.config()
        except SweepError as err:
            raise SweepError(f"{where}: {err}") from None
        except (TypeError, ValueError, KeyError, FileNotFoundError) as err:
            raise SweepError(f"{where}: cell {cell.label}: {err}") from None
    return cfg
