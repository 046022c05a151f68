"""The main job, ``segbench benchmark``: every stage of the suite from one command.

Default profile (no data needed, within 10 minutes on a 2-core CPU for the whole
registry): complexity for every model, speed on the best available device (CUDA when
present, else CPU) for eager PyTorch and onnxruntime (every model exported to ONNX once),
then the report (tables, plots, ``results/README.md``).

With ``--data ROOT`` it also trains and evaluates the chosen models with the engine
(finished runs with the same configuration are reused, unfinished ones resume) and the
report shows measured accuracy beside the papers' figures.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.device import resolve_device
from bench.core.progress import progress_bar

RESULTS_DIR = Path("results")


@dataclass(frozen=True)
class SpeedProfile:
    """What the speed stage measures (fp32) and its timing limits per configuration.

    ``backends`` are timed in the inference pass (training steps are eager PyTorch only);
    runtime backends export each model with ``exporters`` tried in order.
    """

    inference_batches: tuple[int, ...]
    train_batch: int | None  # a training step at this batch size, if the budget allows
    min_time_s: float
    min_iters: int
    warmup: int
    max_time_s: float
    backends: tuple[str, ...] = ("torch", "onnxruntime")
    # TorchScript first: it exports the registered models 2-5x faster than dynamo on the
    # 2-core VM (2-10 s vs 5-60 s per model) and onnxruntime runs both graphs equally fast
    # (within noise: MALUNet 38 vs 38 ms, EGE-UNet 72 vs 75 ms, UNet 796 vs 896 ms under
    # load, 1 thread); dynamo remains the fallback, and takes over if TorchScript goes away.
    exporters: tuple[str, ...] = ("torchscript", "dynamo")


# On a 2-core CPU a batch-8 forward of the large models (unet, attention_unet,
# transfuse_s) takes 2-3 s and their training step 6-10 s, so max_time_s caps each
# configuration at a few timed iterations, and the training step runs for as many
# models as the time budget allows (cheapest first; see run_train_steps).
PROFILES: dict[str, SpeedProfile] = {
    "default": SpeedProfile(
        inference_batches=(1, 8), train_batch=8,
        min_time_s=0.5, min_iters=5, warmup=2, max_time_s=3.0,
    ),
    "quick": SpeedProfile(
        inference_batches=(1,), train_batch=None,
        min_time_s=0.3, min_iters=5, warmup=1, max_time_s=2.0,
    ),
}  # fmt: skip


MIN_TIMED_ITERS = 3  # bench.speed keeps at least this many timed iterations
EXPORT_S = 8.0  # per model and runtime pass: ONNX export, check, session, eager reference


SETUP_S = 3.0  # per model: build, complexity count for the roofline, memory probe


REPORT_RESERVE_S = 60.0  # kept free for the report stage


def config_s(step_s: float, profile: SpeedProfile) -> float:
    """Seconds bench.speed spends timing one configuration whose step takes ``step_s``.

    Warm-up is capped by max_time_s (at least one step); the timed part lasts
    max(min_iters steps, min_time_s) capped at max_time_s, but never fewer than
    MIN_TIMED_ITERS steps.
    """
    warm = min(profile.warmup * step_s, max(step_s, profile.max_time_s))
    timed = max(
        MIN_TIMED_ITERS * step_s,
        min(max(profile.min_iters * step_s, profile.min_time_s), profile.max_time_s),
    )
    return warm + timed


def estimate_train_s(fwd_ms: float, profile: SpeedProfile) -> float:
    """Seconds for one training-step configuration, from the forward time at its batch:
    a step costs about 3 forward passes (forward, backward, optimizer), plus set-up."""
    return SETUP_S + config_s(3.0 * fwd_ms / 1e3, profile)


def _fwd_ms(inference: Any, model: str, batch: int, backend: str = "torch") -> float:
    """Median inference time of ``backend`` at ``batch`` (scaled from batch 1 if only that
    exists); rows without a backend column are eager PyTorch."""
    ok = inference[
        (inference["status"] == "ok")
        & (inference["mode"] == "inference")
        & (inference["model"] == model)
    ]
    if "backend" in ok:
        ok = ok[ok["backend"].fillna("torch") == backend]
    elif backend != "torch":
        return math.nan
    at_b = ok[ok["batch_size"] == batch]["median_ms"].dropna()
    if len(at_b):
        return float(at_b.iloc[-1])
    at_1 = ok[ok["batch_size"] == 1]["median_ms"].dropna()
    return float(at_1.iloc[-1]) * batch if len(at_1) else math.nan


def predict_inference_s(inference: Any, models: Sequence[str], profile: SpeedProfile) -> float:
    """What the inference pass should have taken by :func:`config_s`; the ratio of the
    real time to this calibrates the training-step estimates (loaded machine, set-up)."""
    total = 0.0
    for m in models:
        for backend in profile.backends:
            steps = [_fwd_ms(inference, m, b, backend) / 1e3 for b in profile.inference_batches]
            total += SETUP_S if backend == "torch" else EXPORT_S
            total += sum(config_s(t, profile) for t in steps if math.isfinite(t))
    return total


def run_train_steps(
    inference: Any,
    models: Sequence[str],
    profile: SpeedProfile,
    deadline: float | None,
    run_one: Callable[[str], None],
    scale: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[str], dict[str, str]]:
    """Time the training step model by model, cheapest first, while it fits the deadline.

    Each model's cost is estimated from its inference timing (:func:`estimate_train_s`)
    times ``scale``; after each model ``scale`` grows to the worst ratio of real to
    estimated time seen, so a loaded machine stops early rather than overrunning.
    Returns the models measured (in ``models`` order) and why the others were not.
    """
    b = profile.train_batch
    if b is None:
        return [], {}
    est: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for m in models:
        fwd = _fwd_ms(inference, m, b)
        if math.isfinite(fwd):
            est[m] = estimate_train_s(fwd, profile)
        else:
            skipped[m] = "no inference timing"
    scale = max(1.0, scale)
    done: list[str] = []
    for m in sorted(est, key=est.__getitem__):
        need = est[m] * scale
        left = None if deadline is None else deadline - clock()
        if left is not None and need > left:
            skipped[m] = f"needs ~{need:.0f} s, {max(left, 0.0):.0f} s left"
            continue
        t0 = clock()
        run_one(m)
        scale = max(scale, (clock() - t0) / est[m])
        done.append(m)
    return [m for m in models if m in done], skipped


@dataclass
class StageResult:
    name: str
    seconds: float
    status: str  # "ok", "skipped", "failed"
    detail: str = ""


@dataclass
class BenchmarkResult:
    stages: list[StageResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    report_readme: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


def _device_peak(device: str) -> Any:
    """The roofline peak of ``device`` (table entry or one micro-measurement), or None to
    let bench.speed find it itself."""
    try:
        from bench.cost.roofline import resolve_peak

        return resolve_peak(device, "fp32")
    except Exception:  # a failed probe only costs the roofline column, never the timings
        return None


class _Display:
    """One header line per stage and a closing summary (rich); inner bars are the stages'."""

    def __init__(self, total: int, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self.total = total
        self.index = 0

    def start(self, name: str, what: str) -> None:
        self.index += 1
        self.console.rule(
            f"[bold]stage {self.index}/{self.total}: {name}[/bold] · {what}", align="left"
        )

    def end(self, st: StageResult) -> None:
        colour = {"ok": "green", "skipped": "yellow"}.get(st.status, "red")
        self.console.print(
            f"[{colour}]{st.status}[/{colour}] {st.name} in {st.seconds:.1f} s"
            + (f" · {st.detail}" if st.detail else "")
        )

    def summary(self, stages: list[StageResult], total_s: float) -> None:
        from rich.table import Table

        table = Table(title=f"segbench benchmark: {total_s / 60:.1f} min")
        for col in ("stage", "status", "time (s)", "detail"):
            table.add_column(col)
        for st in stages:
            table.add_row(st.name, st.status, f"{st.seconds:.1f}", st.detail)
        self.console.print(table)


def _stage(
    display: _Display, result: BenchmarkResult, name: str, what: str, fn: Callable[[], str]
) -> None:
    display.start(name, what)
    t0 = time.perf_counter()
    try:
        detail, status = fn(), "ok"
    except KeyboardInterrupt:
        raise
    except Exception as err:  # one failed stage must not lose the others' results
        detail, status = f"{type(err).__name__}: {err}", "failed"
        result.failures.append(f"{name}: {detail}")
    st = StageResult(name, time.perf_counter() - t0, status, detail)
    result.stages.append(st)
    display.end(st)


@dataclass
class _Job:
    """What every stage of one benchmark run reads."""

    models: list[str]
    device: str  # as asked ("auto" ...)
    dev: str  # resolved
    results: Path
    profile: SpeedProfile
    command: str
    progress: bool
    display: _Display
    t_start: float
    min_time_s: float | None = None
    budget_min: float | None = 10.0


def _complexity_stage(job: _Job, quick: bool) -> str:
    from bench.cost import complexity as cx

    df = cx.run_complexity(
        job.models,
        out_dir=job.results / "complexity",
        cross_check=not quick,
        progress=job.progress,
        command=job.command,
    )
    bad = df[df["status"] == "error"] if "status" in df else df.iloc[0:0]
    if len(bad):
        raise RuntimeError("; ".join(f"{r.model}: {r.reason}" for r in bad.itertuples()))
    return f"{len(df)} rows -> {job.results / 'complexity'}"


def _measure(job: _Job, names: list[str], mode: str, batches: tuple[int, ...], peak: Any) -> Any:
    """One ``run_speed`` pass; failed configurations raise (the stage reports them)."""
    from bench.speed import run as sp

    profile = job.profile
    extra = {"peak": peak} if peak is not None else {}
    if mode == "inference" and tuple(profile.backends) != ("torch",):
        extra.update(backends=profile.backends, exporters=profile.exporters)
    df = sp.run_speed(
        names,
        device=job.dev,
        batch_sizes=batches,
        modes=(mode,),
        min_time_s=profile.min_time_s if job.min_time_s is None else job.min_time_s,
        min_iters=profile.min_iters,
        warmup=profile.warmup,
        max_time_s=profile.max_time_s,
        out_dir=job.results / "speed",
        progress=job.progress,
        command=job.command,
        **extra,
    )
    bad = df[df["status"] == "error"]
    if len(bad):
        raise RuntimeError(
            f"{len(bad)} configuration(s) failed ({mode}): "
            + "; ".join(f"{r.model} bs{r.batch_size}: {r.reason}" for r in bad.itertuples())
        )
    return df


def _speed_stage(job: _Job) -> str:
    """Inference on every backend, then training steps for the models the budget allows."""
    profile = job.profile
    peak = _device_peak(job.dev)  # once for every pass, not once per run_speed call
    t0 = time.perf_counter()
    df = _measure(job, job.models, "inference", profile.inference_batches, peak)
    detail = f"{len(df)} inference configurations"
    if profile.train_batch is None:
        return detail
    predicted = predict_inference_s(df, job.models, profile)
    scale = (time.perf_counter() - t0) / predicted if predicted > 0 else 1.0
    deadline = job.t_start + job.budget_min * 60 - REPORT_RESERVE_S if job.budget_min else None
    errors: list[str] = []

    def one(name: str) -> None:
        try:
            _measure(job, [name], "train", (profile.train_batch,), peak)  # type: ignore[arg-type]
        except RuntimeError as err:  # keep timing the other models
            errors.append(str(err))

    done, skipped = run_train_steps(df, job.models, profile, deadline, one, scale)
    detail += f", training step bs{profile.train_batch} for {len(done)} model(s)"
    if skipped:
        detail += " (not timed: " + "; ".join(f"{m}: {why}" for m, why in skipped.items()) + ")"
    if errors:
        raise RuntimeError(" | ".join(errors))
    return detail


def _train_stage(
    job: _Job,
    data: str | Path,
    epochs: int | None,
    seeds: Sequence[int] | None,
    recipe: str,
    force_train: bool,
) -> str:
    """Train and evaluate every (model, seed) cell; a failed cell does not stop the others."""
    from bench.engine import config as tcfg
    from bench.engine import train as tr

    cells = [(m, s) for m in job.models for s in (seeds or [None])]
    done, failed = 0, []
    for model, seed in progress_bar(cells, enabled=job.progress, desc="runs", unit="run"):
        over: dict[str, Any] = {"model": model, "data": str(data)}
        if epochs is not None:
            over["epochs"] = epochs
        if seed is not None:
            over["seed"] = seed
        if job.device != "auto":
            over["device"] = job.dev
        try:
            cfg = tcfg.TrainConfig.from_recipe(recipe, **over)
            run_dir = tr.run_training(
                cfg, results_dir=job.results, resume=True, force=force_train,
                quiet=not job.progress,
            )  # fmt: skip
            done += 1
            job.display.console.print(f"  {model} seed {cfg.seed}: {run_dir}")
        except KeyboardInterrupt:
            raise
        except Exception as err:  # keep training the other cells
            failed.append(f"{model} seed {seed}: {type(err).__name__}: {err}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cells)} run(s) failed: " + " | ".join(failed))
    return f"{done} run(s) finished or reused"


def _report_stage(job: _Job, out: BenchmarkResult) -> str:
    from bench.analysis.report import write as rp

    rep = rp.write_report(job.results, job.results, command=job.command, progress=job.progress)
    out.report_readme = rep.readme
    return f"{len(rep.tables)} table files, {len(rep.plots)} plot files, {rep.readme}"


def run_benchmark(
    models: Sequence[str],
    device: str = "auto",
    results_dir: str | Path = RESULTS_DIR,
    quick: bool = False,
    skip_complexity: bool = False,
    skip_speed: bool = False,
    data: str | Path | None = None,
    epochs: int | None = None,
    seeds: Sequence[int] | None = None,
    recipe: str = "fair",
    force_train: bool = False,
    min_time_s: float | None = None,
    budget_min: float | None = 10.0,
    progress: bool = True,
    command: str | None = None,
    backends: Sequence[str] | None = None,
) -> BenchmarkResult:
    """Run the stages in order; a failed stage is reported and the others still run.

    ``budget_min`` bounds the optional training-step timing of the speed stage: it
    runs for the models whose estimated cost still fits (None: no bound). ``backends``
    replaces the profile's inference backends (default: eager PyTorch and onnxruntime).
    """
    from bench.core.env import environment
    from bench.core.io import write_json

    results = Path(results_dir)
    models = list(models)
    command = command or shlex.join(["segbench", "benchmark", *map(str, models)])
    dev = str(resolve_device(device))
    profile = PROFILES["quick" if quick else "default"]
    if backends is not None:  # e.g. add openvino, or time eager PyTorch only
        profile = dataclasses.replace(profile, backends=tuple(dict.fromkeys(backends)))
    n_stages = 2 + (not skip_complexity) + (not skip_speed) + (data is not None)
    display = _Display(n_stages, quiet=not progress)
    job = _Job(models, device, dev, results, profile, command, progress, display,
               time.perf_counter(), min_time_s, budget_min)  # fmt: skip
    out = BenchmarkResult()

    display.start("setup", f"{len(models)} models, device {dev}, results in {results}/")
    out.stages.append(StageResult("setup", 0.0, "ok", ", ".join(models)))
    if not skip_complexity:
        what = f"params and MACs of {len(models)} models"
        _stage(display, out, "complexity", what, lambda: _complexity_stage(job, quick))
    if not skip_speed:
        what = f"inference bs {','.join(map(str, profile.inference_batches))} on " + ", ".join(
            profile.backends
        )
        if profile.train_batch:
            what += f"; train bs {profile.train_batch} (budget)"
        _stage(display, out, "speed", f"{dev}, fp32, {what}", lambda: _speed_stage(job))
    if data is not None:
        what = f"{len(models)} models x {len(seeds or [None])} seed(s) on {data}"
        _stage(display, out, "train+evaluate", what,
               lambda: _train_stage(job, data, epochs, seeds, recipe, force_train))  # fmt: skip

    # The benchmark's own record: the report quotes its command and stage timings.
    record = {
        "command": command,
        "profile": "quick" if quick else "default",
        "device": dev,
        "models": models,
        "data": str(data) if data is not None else None,
        "stages": [vars(s) for s in out.stages],
        "seconds_before_report": time.perf_counter() - job.t_start,
        "environment": environment(dev),
    }
    write_json(results / "benchmark.json", record)
    what = f"tables, plots and README in {results}/"
    _stage(display, out, "report", what, lambda: _report_stage(job, out))
    total = time.perf_counter() - job.t_start
    record["stages"] = [vars(s) for s in out.stages]
    record["seconds"] = total
    write_json(results / "benchmark.json", record)
    display.summary(out.stages, total)
    return out
