"""The measured step (inference, or one full training step) and the measurement of one configuration, run inside the worker process."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.core.measure import pinned_threads
from bench.core.optim import adamw
from bench.core.precision import autocast_context, memory_format
from bench.deploy.check import agreement_columns
from bench.speed.memory import PeakRSS, _free_memory
from bench.speed.timing import back_to_back, summarize, time_step
from bench.speed.variants import MODES, _dtype_note, _short


def make_step(
    model: nn.Module,
    mode: str,
    device: str | torch.device,
    *,
    dtype: str = "fp32",
    batch_size: int = 1,
    input_size: int = 256,
    in_channels: int = 3,
    channels_last: bool = False,
    compile: bool = False,
    loss_weights: tuple[float, tuple[float, ...]] = (1.0, ()),
) -> Callable[[], None]:
    """Move ``model`` to ``device`` and return a zero-argument inference or training step.

    Training uses BCE-with-logits on a random binary mask (one class) or cross-entropy
    (several), AdamW, and ``forward_aux`` with every auxiliary head when
    ``loss_weights`` lists any.
    """
    dev = torch.device(device)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    fmt = memory_format(channels_last)
    model = model.to(dev, memory_format=fmt)
    x = torch.randn(batch_size, in_channels, input_size, input_size, device=dev)
    x = x.contiguous(memory_format=fmt)
    amp = autocast_context(dev, dtype)  # fp32: none; the variant list skipped the rest
    if mode == "inference":
        model.eval()
        fn = torch.compile(model) if compile else model

        def infer() -> None:
            with torch.inference_mode(), amp:
                fn(x)

        return infer

    model.train()
    main_w, aux_w = loss_weights
    if aux_w and not hasattr(model, "forward_aux"):
        raise TypeError(f"{type(model).__name__} has auxiliary loss weights but no forward_aux")
    forward = model.forward_aux if aux_w else model
    fn = torch.compile(forward) if compile else forward
    opt = adamw(model, lr=1e-3)  # as training: tied parameters never in one foreach launch
    scaler = torch.amp.GradScaler(dev.type) if dtype == "fp16" else None
    target: torch.Tensor | None = None

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        nonlocal target
        if target is None:  # built lazily: the class count is known from the first output
            if logits.shape[1] == 1:
                target = torch.rand(logits.shape[0], 1, *logits.shape[2:], device=dev) > 0.5
                target = target.float()
            else:
                target = torch.randint(
                    logits.shape[1], (logits.shape[0], *logits.shape[2:]), device=dev
                )
        if logits.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(logits.float(), target)
        return F.cross_entropy(logits.float(), target)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            if aux_w:
                logits, aux = fn(x)
                if len(aux) != len(aux_w):
                    raise ValueError(
                        f"forward_aux returned {len(aux)} aux maps, loss_weights lists {len(aux_w)}"
                    )
                loss = main_w * loss_of(logits)
                for w, a in zip(aux_w, aux):
                    loss = loss + w * loss_of(a)
            else:
                loss = loss_of(fn(x))
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return train


#: TF32 while measuring: off, so an ``fp32`` row is IEEE fp32 (PyTorch lets cuDNN
#: convolutions use TF32 tensor cores by default on Ampere and later) and the fp32 parts
#: of an autocast row stay fp32 too. Rows record it (``tf32``) and so does the JSON.
TF32 = False


@contextlib.contextmanager
def pinned_tf32(allowed: bool) -> Iterator[dict[str, bool]]:
    """Set cuDNN's and cuBLAS's TF32 switches (restored afterwards); yields the flags."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield tf32_flags()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def tf32_flags() -> dict[str, bool]:
    """The TF32 switches in effect now."""
    return {
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
    }


def _reset_peaks(device: torch.device, rss: PeakRSS) -> None:
    """Start the memory peaks at the timed loop: the warm-up's cuDNN benchmark workspaces
    and compile autotuning buffers are not the model's memory, and would make the figure
    depend on what ran before. The RSS delta still counts from before the model was built."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss.reset_peak()


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or old
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


# Indirection points so tests can substitute tiny models without touching the registry.
def _build_model(name: str) -> nn.Module:
    from models import create_model

    return create_model(name, num_classes=1, in_channels=3)


def model_info(name: str) -> Any:
    """The registry's ``model_info(name)`` (unknown names raise ``UnknownModelError``); the
    speed run and ``segbench speed`` ask here, so tests can substitute tiny models."""
    import models

    return models.model_info(name)


def _complexity(name: str, input_size: int) -> tuple[float, float, float] | str:
    """(MACs per image, fp32 activation bytes per image, parameter bytes), or why not."""
    try:
        from bench.cost.flops import analyze
    except ImportError as err:
        return f"complexity unavailable ({_short(err)})"
    try:
        model = _build_model(name).eval()
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        c = analyze(model, input_shape=(1, 3, input_size, input_size))
        return float(c.macs), float(c.activation_bytes), float(param_bytes)
    except Exception as err:
        return f"complexity failed ({_short(err)})"


def measure_config(
    name: str,
    info: Any,
    device: torch.device,
    mode: str,
    dtype: str,
    channels_last: bool,
    compile: bool,
    batch_size: int,
    *,
    input_size: int,
    timing: dict[str, Any],
    noisy_threshold: float,
    threads: int | None,
) -> dict[str, Any]:
    """Build a fresh model and time one configuration (runs in the worker process)."""
    _free_memory()
    torch.manual_seed(0)
    step = model = None
    b2b = timing.get("back_to_back", device.type == "cuda")
    try:
        with (
            pinned_threads(threads),
            _cudnn_benchmark(device),
            pinned_tf32(TF32) as tf32,
            PeakRSS() as rss,  # entered before the model is built: the delta is the model's
        ):
            model = _build_model(name)
            step = make_step(
                model,
                mode,
                device,
                dtype=dtype,
                batch_size=batch_size,
                input_size=input_size,
                channels_last=channels_last,
                compile=compile,
                loss_weights=tuple(info.loss_weights),
            )
            # At least one untimed call, so compilation and cuDNN autotuning (first call)
            # never land in the timed iterations, even with warmup=0.
            warm = {k: timing[k] for k in ("min_time_s", "min_iters", "max_time_s")}
            times, capped = time_step(
                step,
                device,
                warmup=max(1, int(timing["warmup"])),
                warmup_time_s=float(timing.get("warmup_time_s") or 0.0),
                before_timing=lambda: _reset_peaks(device, rss),
                **warm,
            )
            per_call = back_to_back(step, device, len(times)) if b2b else None
            peak_cuda = (
                torch.cuda.max_memory_allocated(device) / 2**20
                if device.type == "cuda"
                else math.nan
            )
            agree = (
                _autocast_agreement(model, device, dtype, input_size, channels_last)
                if mode == "inference" and dtype != "fp32"
                else {}
            )
    finally:
        del step, model
        if compile:  # drop compiled graphs so the next configuration starts clean
            import torch._dynamo as dynamo

            dynamo.reset()
    row = summarize(times, noisy_threshold).as_row(
        batch_size, capped=capped, max_time_s=timing["max_time_s"], min_iters=timing["min_iters"]
    )
    if per_call is not None:  # throughput of a back-to-back run (a GPU's queue kept full)
        row["throughput_img_s"] = batch_size / per_call if per_call > 0 else math.nan
    # else every call synchronous (CPU): the robust median of the timed calls (as_row's)
    notes = (_dtype_note(device, dtype), row.pop("reason"))
    return {
        **row,
        "throughput_method": "back-to-back" if per_call is not None else "median",
        "peak_mem_mb": peak_cuda, "rss_mb": rss.peak_mb, "rss_delta_mb": rss.delta_mb,
        "rss_method": rss.method, "tf32": any(tf32.values()),
        "reason": "; ".join(n for n in notes if n),
        "backend_version": torch.__version__, "precision_detail": precision_detail(device, dtype),
        **agree,
    }  # fmt: skip


def precision_detail(device: torch.device, dtype: str) -> str:
    """What an eager row computes in: autocast, and on CUDA whether TF32 units may be used."""
    if dtype == "fp32":
        if device.type == "cuda":
            conv = "allowed" if torch.backends.cudnn.allow_tf32 else "off"
            mm = "allowed" if torch.backends.cuda.matmul.allow_tf32 else "off"
            return f"fp32 (no autocast; TF32 for cuDNN convolutions {conv}, for matmul {mm})"
        return "fp32 (no autocast)"
    return _dtype_note(device, dtype) or f"{dtype} autocast on {device.type}"


def _autocast_agreement(
    model: nn.Module,
    device: torch.device,
    dtype: str,
    input_size: int,
    channels_last: bool,
) -> dict[str, float]:
    """Autocast output vs the same model in fp32 on one seeded image (agreement columns;
    one image whatever the timed batch, to keep the check cheap)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, input_size, input_size, generator=gen).to(device)
    x = x.contiguous(memory_format=memory_format(channels_last))
    model.eval()
    with torch.inference_mode():
        ref = model(x).float().cpu().numpy()
        with autocast_context(device, dtype):
            out = model(x).float().cpu().numpy()
    return agreement_columns(ref, out)
