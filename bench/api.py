"""segbench from Python (notebooks, scripts): the CLI's measurements as functions.

Each function takes a registry name **or an ``nn.Module`` instance** that is not
registered at all, and returns the records the CLI writes:

* :func:`complexity` -> ``pandas.DataFrame``, the rows of ``complexity.csv``;
* :func:`speed` -> ``pandas.DataFrame``, the rows of ``speed-<device>.csv``;
* :func:`train` -> :class:`RunRecord` (run folder, ``metrics.json``, ``per_image.csv``);
* :func:`evaluate` -> :class:`EvalRecord` (``metrics.json`` record, per-image table);
* :func:`check` -> the ``segbench check-model`` results.

An instance is registered for the duration of the call only (:func:`as_registered`),
under ``name=`` or its class name in lower case, with a builder that returns a copy of
it; a plain ``nn.Module`` (not a ``SegmentationModel``) gets ``input_spec=`` (default: any
size) and ``output=`` (how to find the logits in a dict or tuple output, see
:func:`models.adapter.select_logits`). Its records' ``source`` names the instance's class.

Importing this module pins segbench's own ``models`` package (see
:mod:`bench.core.packages`), so a notebook started in a repository with its own
``models/`` package still measures segbench's registry.

Example::

    from bench import api
    df = api.complexity(MyNet(), input_size=(1, 3, 256, 256), name="mynet")
    run = api.train(MyNet(), data="data/isic2017", name="mynet", epochs=1, image_size=64)
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from bench.core.packages import pin_models_package

pin_models_package()

__all__ = [
    "EvalRecord",
    "RunRecord",
    "as_registered",
    "check",
    "complexity",
    "evaluate",
    "speed",
    "train",
]

ModelLike = str | nn.Module


@dataclass(frozen=True)
class RunRecord:
    """A finished training run: its folder and the records the CLI writes into it."""

    run_dir: Path
    metrics: dict[str, Any]  # metrics.json
    per_image: Any  # per_image.csv as a DataFrame (None when the run wrote none)


@dataclass(frozen=True)
class EvalRecord:
    """An evaluation: the metrics.json record, the per-image table and where they went."""

    record: dict[str, Any]
    per_image: Any  # DataFrame
    out_dir: Path | None


@contextlib.contextmanager
def as_registered(
    model: ModelLike,
    name: str | None = None,
    *,
    input_spec: Any = None,
    output: Any = None,
) -> Iterator[str]:
    """Yield a registry name for ``model``: a name as it is, an instance registered for
    the block only (its builder returns a deep copy; ``num_classes`` / ``in_channels`` of
    the harness are not applied to an instance: build it as you want it measured)."""
    from models import InputSpec, SegmentationModel, register_model
    from models.registry import unregister_model

    if isinstance(model, str):
        yield model
        return
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a registry name or an nn.Module, got {type(model)!r}")
    cls = type(model)
    key = name or cls.__name__.lower()
    plain = not isinstance(model, SegmentationModel)
    if plain and input_spec is None:
        input_spec = InputSpec(multiple=1, min_size=1)

    def build(num_classes: int = 1, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        if kwargs:
            raise TypeError(f"{key}: an instance takes no builder arguments, got {kwargs}")
        return copy.deepcopy(model)

    register_model(
        key,
        architecture=cls,
        input_spec=input_spec if plain else None,
        output=output if plain else None,
        full_name=cls.__name__,
        source=f"instance of {cls.__module__}.{cls.__qualname__}",
    )(build)
    try:
        yield key
    finally:
        unregister_model(key)


def complexity(
    model: ModelLike | Sequence[ModelLike],
    input_size: Sequence[int] = (1, 3, 256, 256),
    *,
    name: str | None = None,
    cross_check: bool = False,
    device: str = "cpu",
    **register: Any,
) -> Any:
    """Parameters, exact MACs, other FLOPs and activation memory: one row per model, the
    columns of ``complexity.csv`` (``cross_check=True`` adds thop / fvcore / torch)."""
    import pandas as pd

    from bench.cost.complexity import complexity_row

    models = [model] if isinstance(model, (str, nn.Module)) else list(model)
    rows = []
    for m in models:
        with as_registered(m, name if len(models) == 1 else None, **register) as key:
            row = complexity_row(key, tuple(input_size), cross_check=cross_check, device=device)
        row.pop("_detail", None)
        rows.append(row)
    return pd.DataFrame(rows)


def speed(
    model: ModelLike,
    *,
    name: str | None = None,
    device: str = "cpu",
    batch_sizes: Sequence[int] = (1,),
    modes: Sequence[str] = ("inference",),
    input_size: int = 256,
    out_dir: str | Path | None = None,
    **kwargs: Any,
) -> Any:
    """Latency / throughput / memory rows as ``segbench speed`` writes them (nothing is
    written unless ``out_dir``). An instance is measured in this process (no isolated
    worker); ``kwargs`` go to :func:`bench.speed.run.run_speed`."""
    from bench.speed.run import run_speed

    register = {k: kwargs.pop(k) for k in ("input_spec", "output") if k in kwargs}
    isolate = kwargs.pop("isolate", isinstance(model, str))
    with as_registered(model, name, **register) as key:
        return run_speed(
            [key],
            device=device,
            batch_sizes=batch_sizes,
            modes=modes,
            input_size=input_size,
            out_dir=out_dir,
            progress=False,
            isolate=isolate,
            **kwargs,
        )


def train(
    model: ModelLike,
    data: str | Path,
    *,
    name: str | None = None,
    recipe: str = "fair",
    results: str | Path = "results",
    input_spec: Any = None,
    output: Any = None,
    force: bool = False,
    quiet: bool = True,
    **overrides: Any,
) -> RunRecord:
    """Train with a recipe (``overrides``: any TrainConfig field, e.g. ``epochs=1,
    image_size=64``) and return the run's records. An instance is trained from a copy
    of its current weights; the run folder is ``results/runs/<dataset>/<name>/...``."""
    from bench.engine.config import TrainConfig
    from bench.engine.train import run_training

    with as_registered(model, name, input_spec=input_spec, output=output) as key:
        cfg = TrainConfig.from_recipe(recipe, model=key, data=str(data), **overrides)
        run_dir = run_training(cfg, results, force=force, quiet=quiet)
    return _run_record(run_dir)


def _run_record(run_dir: Path) -> RunRecord:
    import pandas as pd

    from bench.core.io import read_json

    per_image = run_dir / "per_image.csv"
    return RunRecord(
        run_dir,
        read_json(run_dir / "metrics.json"),
        pd.read_csv(per_image) if per_image.is_file() else None,
    )


def evaluate(
    model: ModelLike | str | Path | None = None,
    data: str | Path | None = None,
    *,
    run_dir: str | Path | None = None,
    split: str | None = None,
    name: str | None = None,
    settings: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    **kwargs: Any,
) -> EvalRecord:
    """Score a run folder (``run_dir=``) or a model with its current weights (an instance,
    or a registry name with random weights) on ``data`` / ``split``; ``settings`` are the
    CLI's (``image_size``, ``input_scaling``, ``threshold``...). A run of an instance that
    is not registered needs that instance again (``evaluate(MyNet(), run_dir=...)``): the
    run's checkpoint is loaded into a copy of it."""
    import torch

    from bench.core.io import read_json
    from bench.engine.run_eval import evaluate_model

    register = {k: kwargs.pop(k) for k in ("input_spec", "output") if k in kwargs}
    if run_dir is not None:
        if isinstance(model, nn.Module):
            name = name or str(read_json(Path(run_dir) / "config.json").get("model"))
        with (
            as_registered(model, name, **register)
            if isinstance(model, nn.Module)
            else contextlib.nullcontext()
        ):
            res = evaluate_model(
                run_dir=run_dir, data=data, split=split, out=out, device=device, **kwargs
            )
        return EvalRecord(res.record, res.result.per_image, res.out_dir)
    if model is None:
        raise ValueError("evaluate: give a model (name or nn.Module) or run_dir=")
    from models import create_model

    with (
        as_registered(model, name, **register) as key,
        tempfile.TemporaryDirectory(prefix="segbench-api-") as tmp,
    ):
        ckpt = Path(tmp) / f"{key}.pt"
        torch.save(create_model(key).state_dict(), ckpt)
        res = evaluate_model(
            checkpoint=ckpt,
            data=data,
            split=split or "test",
            given={"model": key, **dict(settings or {})},
            out=out,
            device=device,
            **kwargs,
        )
    return EvalRecord(res.record, res.result.per_image, res.out_dir)


def check(name: str, *, at_least: int = 64, onnx: bool = True) -> Any:
    """The ``segbench check-model`` results (a list of :class:`CheckResult`) for a registered
    model: the contract builds it with other class and channel counts, which an instance
    cannot provide."""
    from bench.jobs.check_model import run_checks

    return run_checks(name, at_least=at_least, onnx=onnx)
