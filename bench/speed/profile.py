"""Where a model's inference time goes, operator by operator, at several batch sizes.

``segbench speed`` says *how long* a batch takes; when the per-image time rises with the
batch (the ``batch_scaling`` flag, issue 24: lraspp on an Intel Xeon with AMX ran batch 8
at 12.7x batch 1's per-image time) it cannot say *which kernels* did it. This module runs
the model under ``torch.profiler`` at each batch size and tabulates each operator's own
CPU time (``self`` time: its children excluded, so leaf kernels such as
``aten::mkldnn_convolution`` and ``aten::_slow_conv2d_forward`` are told apart) per
iteration and per image. :func:`batch_rise` then lines the batch sizes up per operator
and sorts by the per-image time each one adds over the smallest batch, so the operators
behind a rise are at the top.

Profiling adds overhead per operator call, so these times are not latencies: compare
operators and batch sizes within one profile, and take latency from ``segbench speed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.core.quiet import silenced

#: profiler bookkeeping rows, not the model's work
_PROFILER_ROWS = ("ProfilerStep", "[memory]", "profile_batch")


def profile_operators(
    model: torch.nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    *,
    iters: int = 5,
    warmup: int = 2,
    channels_last: bool = False,
    bf16: bool = False,
    by_shape: bool = False,
) -> pd.DataFrame:
    """Self CPU time of every operator of ``model``'s inference, per batch size.

    ``input_shape`` is one image's ``(C, H, W)``. Each batch size gets ``warmup`` untimed
    calls, then ``iters`` profiled calls. One row per batch size and operator (and input
    shapes, with ``by_shape``): ``calls`` and ``self_ms`` per iteration, ``per_image_ms``
    and ``share`` of the batch size's total self time. Runs on CPU in the current thread
    count; the caller fixes it.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters {iters} must be >= 1 and warmup {warmup} >= 0")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes {list(batch_sizes)}: each must be >= 1")
    from torch.profiler import ProfilerActivity, profile

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(memory_format=fmt)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    frames = []
    for b in batch_sizes:
        x = torch.rand(b, *input_shape).to(memory_format=fmt)
        with torch.inference_mode(), cast:
            for _ in range(warmup):
                model(x)
            # kineto logs its start/stop (and a failed GPU probe) to fd 2: not a result
            with silenced(descriptors=True):
                prof = profile(activities=[ProfilerActivity.CPU], record_shapes=by_shape)
                prof.start()
            try:
                for _ in range(iters):
                    model(x)
            finally:
                with silenced(descriptors=True):
                    prof.stop()
        rows = [
            {
                "batch_size": b,
                "op": e.key,
                "input_shapes": str(e.input_shapes) if by_shape else "",
                "calls": e.count / iters,
                "self_ms": e.self_cpu_time_total / 1e3 / iters,
            }
            for e in prof.key_averages(group_by_input_shape=by_shape)
            if e.self_cpu_time_total > 0 and not e.key.startswith(_PROFILER_ROWS)
        ]
        frame = pd.DataFrame(rows)
        frame["per_image_ms"] = frame["self_ms"] / b
        frame["share"] = frame["self_ms"] / frame["self_ms"].sum()
        frames.append(frame.sort_values("self_ms", ascending=False))
    return pd.concat(frames, ignore_index=True)


def batch_rise(profile: pd.DataFrame) -> pd.DataFrame:
    """Per operator: per-image self time at each batch size, and what the largest batch
    adds per image over the smallest, largest addition first.

    Columns ``per_image_ms@B`` for each batch size ``B``, ``added_ms`` (largest batch
    minus smallest, per image; an operator missing at one size counts 0 there: it ran
    another kernel) and ``ratio`` (largest / smallest; NaN where the smallest is 0). The
    last row, ``(all operators)``, is the model's total.
    """
    keys = ["op", "input_shapes"]
    wide = profile.pivot_table(
        index=keys, columns="batch_size", values="per_image_ms", aggfunc="sum", fill_value=0.0
    )
    sizes = sorted(wide.columns)
    wide.loc[("(all operators)", ""), :] = wide.sum(axis=0)
    small, large = wide[sizes[0]], wide[sizes[-1]]
    out = wide.rename(columns={b: f"per_image_ms@{b}" for b in sizes})
    out["added_ms"] = large - small
    out["ratio"] = (large / small.where(small > 0)).astype(float)
    out = out.reset_index()
    total = out["op"].eq("(all operators)")
    body = out[~total].sort_values("added_ms", ascending=False)
    return pd.concat([body, out[total]], ignore_index=True)


def summary(rise: pd.DataFrame, top: int = 3) -> str:
    """One sentence: the model's per-image ratio and the operators that add the most."""
    total = rise[rise["op"] == "(all operators)"].iloc[0]
    cols = [c for c in rise.columns if c.startswith("per_image_ms@")]
    small, large = cols[0].split("@")[1], cols[-1].split("@")[1]
    head = rise[(rise["op"] != "(all operators)") & (rise["added_ms"] > 0)].head(top)
    parts = [f"{r.op} {r.added_ms:+.2f} ms" for r in head.itertuples()]
    adds = "; most added per image: " + ", ".join(parts) if parts else ""
    return (
        f"per-image self time {total[cols[0]]:.2f} ms at batch {small}, "
        f"{total[cols[-1]]:.2f} ms at batch {large} ({total['ratio']:.2f}x){adds}"
    )


def profile_record(rise: pd.DataFrame, settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of a profile: settings, the :func:`batch_rise` table and its
    one-line summary."""
    return {
        "settings": settings,
        "summary": summary(rise),
        "batch_rise": rise.to_dict(orient="records"),
    }


def run_profile(
    model_name: str,
    batch_sizes: Sequence[int],
    *,
    input_size: int = 256,
    threads: int | None = None,
    results: str | Path = "results",
    command: str = "",
    **options: Any,
) -> tuple[pd.DataFrame, dict[str, Any], Path]:
    """Profile registered model ``model_name`` (:func:`profile_operators` with
    ``options``) in ``threads`` CPU threads (restored afterwards) and write
    ``results/speed/profile/<model>-<host>.{csv,json}``: the per-operator frame and the
    record with the settings, the environment and the :func:`batch_rise` table.

    Returns the rise table, the record and the files' stem.
    """
    from bench.core.env import device_slug, environment
    from bench.core.io import write_csv, write_json
    from models import create_model

    model = create_model(model_name)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        frame = profile_operators(model, (3, input_size, input_size), batch_sizes, **options)
        env = environment("cpu")
    finally:
        torch.set_num_threads(before)
    settings = {
        "model": model_name,
        "batch_sizes": list(batch_sizes),
        "input_size": input_size,
        **{k: options.get(k, v) for k, v in _OPTION_DEFAULTS.items()},
        "threads": env["torch_threads"],
        "command": command,
        "environment": env,
    }
    rise = batch_rise(frame)
    record = profile_record(rise, settings)
    stem = Path(results) / "speed" / "profile" / f"{model_name}-{device_slug('cpu')}"
    write_csv(stem.with_suffix(".csv"), frame)
    write_json(stem.with_suffix(".json"), record)
    return rise, record, stem


#: the :func:`profile_operators` options a record states, at their defaults
_OPTION_DEFAULTS = {
    "iters": 5,
    "warmup": 2,
    "channels_last": False,
    "bf16": False,
    "by_shape": False,
}
