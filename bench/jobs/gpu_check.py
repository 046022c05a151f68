"""``segbench gpu-check``: a few minutes on a GPU that validate segbench's CUDA-only paths.

segbench was developed without a GPU: every CUDA-only behaviour (listed in
``docs/gpu.md``) is unit-tested on the CPU through mocks and pure functions only. This
job runs each of them once on a real GPU and prints a pass / fail / skip table, so the
first user with a GPU learns in minutes whether timing, mixed precision, TF32,
memory, the optimizer with tied parameters, the sync-free data path, the speed
worker's recovery and DDP behave. Nothing is written to ``results/``. On a machine
without a GPU every row is skipped.
"""

from __future__ import annotations

import copy
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["CHECKS", "CheckResult", "format_checks", "run_gpu_check"]


@dataclass(frozen=True)
class CheckResult:
    """One row of the table: ``status`` is ``pass``, ``fail`` or ``skip``."""

    name: str
    status: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class _Skip(Exception):
    """Raised by a check that cannot run here (reason in the message)."""


def _malunet(tied: bool = True) -> torch.nn.Module:
    from models import create_model

    torch.manual_seed(0)
    return create_model("malunet", tie_memory=tied)


def _batch(dev: torch.device, n: int = 4, size: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(dev)


# --------------------------------------------------------------------------- checks


def check_device(dev: torch.device) -> str:
    from bench.core.device import cuda_bf16_native

    cap = torch.cuda.get_device_capability(dev)
    return (
        f"{torch.cuda.get_device_name(dev)}, compute capability {cap[0]}.{cap[1]}, torch "
        f"{torch.__version__}, CUDA {torch.version.cuda}, native bf16: "
        f"{'yes' if cuda_bf16_native(dev) else 'no'}, GPUs visible: {torch.cuda.device_count()}"
    )


def check_timing(dev: torch.device) -> str:
    """CUDA-event times agree with synchronised wall-clock times; back-to-back is faster."""
    from bench.speed.timing import back_to_back, summarize, time_step

    a = torch.randn(4096, 4096, device=dev)

    def step() -> None:
        for _ in range(4):
            torch.mm(a, a)

    times, _ = time_step(step, dev, warmup=3, warmup_time_s=1.0, min_time_s=1.0, min_iters=10)
    st = summarize(times)
    wall = []
    for _ in range(10):
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize(dev)
        wall.append(time.perf_counter() - t0)
    wall_ms = summarize(wall).median_ms
    b2b_ms = back_to_back(step, dev, 10) * 1e3
    ratio = st.median_ms / wall_ms
    detail = (
        f"events {st.median_ms:.2f} ms (IQR {st.iqr_ms:.2f}), wall {wall_ms:.2f} ms, "
        f"back-to-back {b2b_ms:.2f} ms/call"
    )
    if not 0.75 < ratio < 1.25:
        raise AssertionError(f"events and wall clock disagree ({ratio:.2f}x): {detail}")
    if b2b_ms > 1.1 * wall_ms:
        raise AssertionError(f"back-to-back slower than synchronised calls: {detail}")
    if st.noisy:
        detail += " (noisy: other work on this GPU?)"
    return detail


def check_tf32(dev: torch.device) -> str:
    """Speed rows measure with TF32 off: an fp32 convolution then matches float64."""
    from bench.speed.steps import TF32, pinned_tf32

    x = torch.randn(8, 64, 64, 64, device=dev)
    w = torch.randn(64, 64, 3, 3, device=dev)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    errs = {}
    for allowed in (False, True):
        with pinned_tf32(allowed):
            out = F.conv2d(x, w, padding=1)
        errs[allowed] = float((out.double() - ref).abs().max() / ref.abs().max())
    detail = f"rel. error fp32 {errs[False]:.1e}, with TF32 allowed {errs[True]:.1e}"
    if TF32:
        raise AssertionError(f"speed rows would run with TF32 (steps.TF32 is True); {detail}")
    if errs[False] > 1e-5:
        raise AssertionError(f"fp32 convolution is not IEEE fp32 with TF32 off: {detail}")
    return detail


def _amp_step(dev: torch.device, amp: str) -> str:
    from bench.core.precision import autocast_context

    model = _malunet().to(dev)
    ref_model = copy.deepcopy(model)
    x = _batch(dev)
    with torch.no_grad():
        ref = ref_model(x).float()
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    with autocast_context(str(dev), amp):
        out = model(x)
    loss = out.float().square().mean()
    scaler.scale(loss).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not torch.isfinite(loss) or not all(torch.isfinite(g).all() for g in grads):
        raise AssertionError(f"{amp}: non-finite loss or gradients")
    diff = (out.detach().float() - ref).abs().mean() / ref.abs().mean().clamp_min(1e-6)
    rel = float(diff)
    if rel > 0.2:  # a sanity bound: bf16 differs by ~5% on an untrained MALUNet (CPU)
        raise AssertionError(f"{amp} output differs from fp32 by {rel:.1%} (mean abs)")
    return f"MALUNet forward + backward finite; output vs fp32 {rel:.2%} (mean abs)"


def check_amp_bf16(dev: torch.device) -> str:
    from bench.core.device import cuda_bf16_native

    if not cuda_bf16_native(dev):
        raise _Skip("no native bf16 on this GPU (training and speed fall back / skip)")
    return _amp_step(dev, "bf16")


def check_amp_fp16(dev: torch.device) -> str:
    return _amp_step(dev, "fp16")


def check_optimizer_tied(dev: torch.device) -> str:
    """MALUNet's tied memory stepped on CUDA equals the CPU for-loop reference."""
    from bench.core.optim import adamw

    base = _malunet(tied=True)
    x_cpu = _batch(torch.device("cpu"), n=2, size=64)

    def run(model: torch.nn.Module, make: Callable[[torch.nn.Module], Any], d: torch.device):
        model = model.to(d)
        opt = make(model)
        x = x_cpu.to(d)
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return {k: v.detach().cpu().double() for k, v in model.state_dict().items()}

    ref = run(copy.deepcopy(base), lambda m: adamw(m), torch.device("cpu"))
    ours = run(copy.deepcopy(base), lambda m: adamw(m), dev)
    plain = run(
        copy.deepcopy(base),
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-2),
        dev,
    )

    def dev_max(s: dict[str, torch.Tensor]) -> float:
        return max(float((s[k] - ref[k]).abs().max()) for k in ref if "linear_" in k)

    ours_err, plain_err = dev_max(ours), dev_max(plain)
    detail = (
        f"IEA memories vs CPU reference: segbench AdamW {ours_err:.1e}, "
        f"torch default (foreach) {plain_err:.1e}"
    )
    if ours_err > 1e-4:
        raise AssertionError(detail)
    return detail


def check_augment_syncs(dev: torch.device) -> str:
    """The GPU augmentation reads nothing back to the host."""
    from bench.data.augment import augment_batch

    x = torch.randint(0, 256, (128, 3, 256, 256), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 2, (128, 1, 256, 256), dtype=torch.uint8, device=dev)
    gen = torch.Generator().manual_seed(0)
    augment_batch(x, y, gen)  # allocator warm-up
    torch.cuda.synchronize(dev)
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t0 = time.perf_counter()
        for _ in range(10):
            augment_batch(x, y, gen)
        torch.cuda.set_sync_debug_mode(old)
        torch.cuda.synchronize(dev)
    finally:
        torch.cuda.set_sync_debug_mode(old)
    ms = (time.perf_counter() - t0) * 100
    return f"no host sync in 10 batches of 128 (torch.cuda.set_sync_debug_mode); {ms:.1f} ms/batch"


def check_train_step_syncs(dev: torch.device) -> str:
    """The trainer's per-step work (index, augment, scale, forward, backward, AdamW) has no
    host sync; the trainer reads the loss only every CHECK_EVERY steps."""
    from bench.core.optim import adamw
    from bench.data.augment import augment_batch, scale_images
    from bench.engine.losses import build_loss
    from bench.engine.run_control import CHECK_EVERY

    model = _malunet().to(dev)
    opt = adamw(model)
    loss_fn = build_loss()
    data_x = torch.randint(0, 256, (32, 3, 256, 256), dtype=torch.uint8, device=dev)
    data_y = torch.randint(0, 2, (32, 1, 256, 256), dtype=torch.uint8, device=dev)
    order = torch.randperm(32).to(dev)
    gen = torch.Generator().manual_seed(0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)

    def step(idx: torch.Tensor) -> None:
        nonlocal loss_sum
        x, y = data_x.index_select(0, idx), data_y.index_select(0, idx)
        x, y = augment_batch(x, y, gen)
        logits = model(scale_images(x, "minmax255"))
        loss = loss_fn(logits, y.float(), [])
        loss_sum += loss.detach().double() * 8
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(order[:8])  # first step: lazy optimizer state, cuDNN autotuning
    torch.cuda.synchronize(dev)
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in range(8, 32, 8):
            step(order[s : s + 8])
    finally:
        torch.cuda.set_sync_debug_mode(old)
    if not math.isfinite(float(loss_sum)):
        raise AssertionError("non-finite loss")
    return f"3 MALUNet training steps without a host sync; loss read every {CHECK_EVERY} steps"


def check_memory(dev: torch.device) -> str:
    """Speed's peak memory covers the timed loop only and exceeds the model's own state."""
    from bench.speed import steps
    from models import model_info

    timing = {"warmup": 2, "min_time_s": 0.2, "min_iters": 5, "max_time_s": 30.0}
    rows = {}
    for mode in ("inference", "train"):
        rows[mode] = steps.measure_config(
            "malunet", model_info("malunet"), dev, mode, "fp32", False, False, 8,
            input_size=256, timing=timing, noisy_threshold=0.1, threads=None,
        )  # fmt: skip
    inf, tr = rows["inference"]["peak_mem_mb"], rows["train"]["peak_mem_mb"]
    detail = (
        f"MALUNet bs8 peak: inference {inf:.0f} MB, train {tr:.0f} MB; "
        f"train throughput {rows['train']['throughput_img_s']:.0f} img/s "
        f"({rows['train']['throughput_method']}), tf32 {rows['train']['tf32']}"
    )
    if not (0 < inf < tr):
        raise AssertionError(f"expected 0 < inference peak < training peak: {detail}")
    return detail


def _device_assert() -> None:
    # An out-of-range index on the GPU: a device-side assert, which poisons the context.
    t = torch.zeros(4, device="cuda")
    t[torch.tensor([10], device="cuda")] = 1.0
    torch.cuda.synchronize()


def _cuda_ok() -> float:
    return float(torch.ones(4, device="cuda").sum())


def check_speed_worker(dev: torch.device) -> str:
    """After a device-side assert the speed worker restarts and the next call works."""
    from bench.speed.variants import MeasurementError
    from bench.speed.worker import Worker

    with Worker() as worker:
        try:
            worker.call(_device_assert)
        except MeasurementError as err:
            first = str(err)
        else:
            raise AssertionError("the device-side assert did not raise")
        if "restarted" not in first:
            raise AssertionError(f"the worker was not restarted after: {first}")
        if worker.call(_cuda_ok) != 4.0:
            raise AssertionError("the restarted worker computed a wrong sum")
    return f"device-side assert -> fresh worker ({first[:60]}...)"


def check_channels_last(dev: torch.device) -> str:
    """Which layout trains MALUNet faster here (training defaults to NCHW on CUDA)."""
    from bench.core.device import cuda_bf16_native
    from bench.speed.steps import make_step
    from bench.speed.timing import back_to_back, time_step

    out = []
    dtypes = ["fp32"] + (["bf16"] if cuda_bf16_native(dev) else [])
    for dtype in dtypes:
        per = {}
        for cl in (False, True):
            step = make_step(_malunet(), "train", dev, dtype=dtype, batch_size=8,
                             channels_last=cl)  # fmt: skip
            time_step(step, dev, warmup=3, warmup_time_s=0.5, min_time_s=0.0, min_iters=1)
            per[cl] = back_to_back(step, dev, 20)
        out.append(f"{dtype}: channels_last {per[False] / per[True]:.2f}x NCHW speed")
    return "; ".join(out) + " (>1: set channels_last=true for CUDA training)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, result: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    from bench.engine import distributed as bdist

    info, created = bdist.init_from_env("cuda")
    try:
        dev = torch.device("cuda", rank)
        bdist.barrier(slow=True)  # the cache barrier's gloo side group
        t = torch.full((3,), float(rank + 1), device=dev)
        bdist.all_reduce_sum(t)
        torch.manual_seed(0)
        model = torch.nn.Conv2d(3, 4, 3).to(dev)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
        x = torch.randn(2, 3, 16, 16, device=dev) * (rank + 1)
        ddp(x).square().mean().backward()
        g = model.weight.grad.detach().clone()
        gathered = bdist.gather_objects(g.cpu())
        ok = float(t[0]) == world * (world + 1) / 2 and torch.equal(gathered[0], gathered[1])
        result[rank] = bool(ok)
    finally:
        bdist.shutdown(created)


def check_ddp(dev: torch.device) -> str:
    """Two ranks over NCCL: the slow (gloo) barrier, an all-reduce, equal DDP gradients."""
    if torch.cuda.device_count() < 2:
        raise _Skip(f"needs 2 GPUs, {torch.cuda.device_count()} visible")
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), result), nprocs=2, join=True)
        ok = dict(result)
    if ok != {0: True, 1: True}:
        raise AssertionError(f"ranks disagree or failed: {ok}")
    return "2 ranks: gloo side-group barrier, NCCL all-reduce and DDP gradients agree"


#: (name, what it validates, function). Order: cheap and fundamental first.
CHECKS: list[tuple[str, str, Callable[[torch.device], str]]] = [
    ("device", "what the GPU is", check_device),
    ("timing", "CUDA events vs wall clock, back-to-back throughput", check_timing),
    ("tf32", "fp32 speed rows without TF32", check_tf32),
    ("amp-bf16", "bf16 autocast step", check_amp_bf16),
    ("amp-fp16", "fp16 autocast step with GradScaler", check_amp_fp16),
    ("optimizer-tied", "MALUNet tied memory under a CUDA optimizer", check_optimizer_tied),
    ("augment-syncs", "GPU augmentation without host syncs", check_augment_syncs),
    ("train-syncs", "training step without host syncs", check_train_step_syncs),
    ("memory", "peak memory of speed rows", check_memory),
    ("speed-worker", "worker restart after a sticky CUDA error", check_speed_worker),
    ("channels-last", "layout for CUDA training", check_channels_last),
    ("ddp", "2-rank NCCL + DDP", check_ddp),
]


def run_gpu_check(
    device: str = "cuda",
    only: list[str] | None = None,
    progress: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run :data:`CHECKS` (or the ``only`` names) on ``device``; never raises for a
    failing check (its row says why). Without CUDA every row is ``skip``."""
    names = [c[0] for c in CHECKS]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(names)}")
    results = []
    cuda = torch.cuda.is_available()
    dev = None
    if cuda:
        from bench.core.device import resolve_device

        dev = resolve_device(device, allow=("cuda",))
    for name, _what, fn in CHECKS:
        if only and name not in only:
            continue
        if dev is None:
            res = CheckResult(name, "skip", "no GPU (torch.cuda.is_available() is False)")
        else:
            try:
                res = CheckResult(name, "pass", fn(dev))
            except _Skip as why:
                res = CheckResult(name, "skip", str(why))
            except Exception as err:  # a failing check is a row, not the end of the job
                where = traceback.extract_tb(err.__traceback__)[-1]
                res = CheckResult(
                    name,
                    "fail",
                    f"{type(err).__name__}: {str(err).strip()[:300]} "
                    f"({os.path.basename(where.filename)}:{where.lineno})",
                )
            finally:
                if cuda:
                    torch.cuda.empty_cache()
        results.append(res)
        if progress is not None:
            progress(res)
    return results


def format_checks(results: list[CheckResult], width: int = 100) -> str:
    """A fixed-width table with a summary line."""
    what = {c[0]: c[1] for c in CHECKS}
    lines = [f"{'check':<15} {'status':<6} detail", "-" * width]
    for r in results:
        text = r.detail if len(r.detail) <= width - 23 else r.detail[: width - 24] + "…"
        lines.append(f"{r.name:<15} {r.status.upper():<6} {text}")
        if r.status == "fail":
            lines.append(f"{'':<22} ({what.get(r.name, '')})")
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    lines.append("-" * width)
    summary = f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
    if results and counts["skip"] == len(results):
        summary += ": every row skipped (no GPU here); run this on a machine with a GPU"
    lines.append(summary)
    return "\n".join(lines)
