"""CUDA-only behaviour (issue 16), tested on the CPU: no GPU ran any of this.

Each test pins one decision a GPU would expose (tied parameters under a multi-tensor
optimizer, sync-free augmentation and training steps, memory and TF32 of speed rows,
the speed worker after a sticky CUDA error, the roofline device table, the NCCL cache
barrier, CUDA defaults) through mocks, monkeypatches or pure functions. What a first
GPU run must check by hand is in docs/gpu.md and ``segbench gpu-check``.
"""

from __future__ import annotations

import copy
import math
import mmap
import sys
import time
import types
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.core.optim import adamw, adapt_optimizer_state, aliased_parameter_names
from bench.data.augment import augment_batch
from bench.engine.config import TrainConfig


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _malunet(tied: bool = True) -> nn.Module:
    from models import create_model

    torch.manual_seed(0)
    return create_model("malunet", tie_memory=tied)


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 3) -> dict[str, torch.Tensor]:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    for _ in range(n):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- 1. tied params


def test_tied_parameters_never_share_a_multi_tensor_group():
    tied = _malunet(tied=True)
    pairs = aliased_parameter_names(tied)
    assert len(pairs) == 6 and all(p[0].endswith("linear_0.weight") for p in pairs)
    opt = adamw(tied, foreach=True)  # foreach=True: what CUDA parameters get by default
    names = {id(p): n for n, p in tied.named_parameters()}
    for group in opt.param_groups:
        ptrs = [p.untyped_storage().data_ptr() for p in group["params"]]
        if len(set(ptrs)) < len(ptrs):  # a group holding aliased parameters ...
            assert group["foreach"] is False and group["fused"] is False  # ... loops over them
    shared = [g for g in opt.param_groups if g["foreach"] is False]
    assert [names[id(p)] for p in shared[0]["params"]] == [n for pair in pairs for n in pair]
    # the untied model (the paper recipe) has nothing to separate: one group
    assert aliased_parameter_names(_malunet(tied=False)) == []
    assert len(adamw(_malunet(tied=False)).param_groups) == 1


def test_tied_step_with_foreach_requested_equals_the_for_loop_reference():
    base = _malunet()
    ref = _steps(m := copy.deepcopy(base), torch.optim.AdamW(m.parameters(), weight_decay=1e-2))
    ours = _steps(m := copy.deepcopy(base), adamw(m, foreach=True))
    assert all(torch.equal(ref[k], ours[k]) for k in ref)
    # the hazard is real: torch's multi-tensor kernel over the aliased views differs
    plain = copy.deepcopy(base)
    bad = _steps(plain, torch.optim.AdamW(plain.parameters(), weight_decay=1e-2, foreach=True))
    assert not all(torch.equal(ref[k], bad[k]) for k in ref)


def test_a_checkpoint_with_one_optimizer_group_resumes_bit_identically():
    base = _malunet()
    ref_model = copy.deepcopy(base)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), weight_decay=1e-2)  # the old layout
    _steps(ref_model, ref_opt, 2)
    saved_model = copy.deepcopy(ref_model.state_dict())
    saved_opt = copy.deepcopy(ref_opt.state_dict())
    ref = _steps(ref_model, ref_opt, 2)

    model = copy.deepcopy(base)
    model.load_state_dict(saved_model)
    opt = adamw(model, weight_decay=1e-2)
    opt.load_state_dict(adapt_optimizer_state(saved_opt, opt, model))
    assert opt.param_groups[1]["foreach"] is False
    resumed = _steps(model, opt, 2)
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)
    # a state dict in the current layout passes through unchanged
    assert adapt_optimizer_state(opt.state_dict(), opt, model) == opt.state_dict()


def test_paper_trains_malunet_untied_fair_tied_and_other_hashes_stay():
    paper = TrainConfig.from_recipe("paper", model="malunet", data="/d/isic2017-mini")
    fair = TrainConfig.from_recipe("fair", model="malunet", data="/d/isic2017-mini")
    assert paper.effective_model_kwargs == {"tie_memory": False}
    assert fair.effective_model_kwargs == {}  # the builder's default: tied
    # an explicit model_kwargs wins over the recipe's per-model entry
    over = TrainConfig.from_recipe(
        "paper", model="malunet", data="/d/x", model_kwargs="{tie_memory: true}"
    )
    assert over.effective_model_kwargs == {"tie_memory": True}
    # the entry changes only MALUNet's runs: another model's paper hash is as without it
    unet = TrainConfig.from_recipe("paper", model="unet", data="/d/x")
    assert unet.config_hash == unet.replace(per_model_kwargs={}).config_hash
    assert paper.config_hash != paper.replace(per_model_kwargs={}).config_hash
    # the fair MALUNet runs being measured keep their hash (results/.../fair-e20/seed1):
    # recorded with T_max 50, which their sweep files now state (the fair recipe's own
    # default became T_max = epochs)
    seed1 = TrainConfig.from_recipe(
        "fair", model="malunet", data="/work/shared/data/isic2017-mini", dataset="isic2017-mini",
        epochs=20, seed=1, t_max=50,
    )  # fmt: skip
    assert seed1.config_hash == "aa210689a4572b96"
    with pytest.raises(ValueError, match="per_model_kwargs"):
        TrainConfig.from_recipe("fair", data="/d/x", per_model_kwargs="{malunet: 3}")


# --------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from bench.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("data") / "syn", n=40, size=(48, 64), seed=3)


def _trainer(data_root: Path, run_dir: Path, **kw):
    from bench.engine.trainer import _Trainer

    base = dict(
        model="unet", model_kwargs={"base_width": 2}, data=str(data_root), epochs=1,
        image_size=32, batch_size=4, threads=1, device="cpu",
    )  # fmt: skip
    recipe = kw.pop("recipe", "fair")
    cfg = TrainConfig.from_recipe(recipe, **{**base, **kw})
    return _Trainer(cfg, run_dir, "cpu", quiet=True)


def test_trainer_records_the_tie_and_waits_for_the_cache_on_the_slow_barrier(
    data_root, tmp_path, monkeypatch
):
    from bench.engine import distributed as bdist

    calls: list[dict] = []
    monkeypatch.setattr(bdist, "barrier", lambda **kw: calls.append(kw))
    fair = _trainer(data_root, tmp_path / "f", model="malunet", model_kwargs={})
    assert calls == [{"slow": True}]  # rank 0 builds the cache: not the NCCL group's 10 min
    assert len(fair.tied) == 6 and len(fair.optimizer.param_groups) == 2
    paper = _trainer(data_root, tmp_path / "p", model="malunet", model_kwargs={}, recipe="paper")
    assert paper.tied == [] and paper.model_kwargs == {"tie_memory": False}
    assert len(paper.optimizer.param_groups) == 1
    assert fair.deterministic is True  # CPU default: deterministic


def _count_trainer_reads(monkeypatch) -> dict[str, int]:
    """Count tensor -> host reads issued from trainer.py (not from torch internals)."""
    import bench.engine.trainer as bt

    counts = {"n": 0}
    for name in ("__float__", "item", "tolist", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **kw):
            if sys._getframe(1).f_code.co_filename == bt.__file__:
                counts["n"] += 1
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def test_training_reads_the_loss_back_only_at_checks(data_root, tmp_path, monkeypatch):
    from bench.engine.run_control import CHECK_EVERY, _check_every, _StopRequest

    assert _check_every("cuda", False) == CHECK_EVERY == _check_every("cpu", True) > 1
    assert _check_every("cpu", False) == 1  # a single CPU process has no sync to save
    ref = _trainer(data_root, tmp_path / "a", augment=False)
    row_ref = ref._train_epoch(_StopRequest(True))
    t = _trainer(data_root, tmp_path / "b", augment=False)
    t.check_every = 4  # as on CUDA (smaller, for a short epoch)
    counts = _count_trainer_reads(monkeypatch)
    row = t._train_epoch(_StopRequest(True))
    monkeypatch.undo()
    steps = math.ceil(t.n_train / t.per_rank_batch)
    assert steps >= 6
    # one read per check (+ the sampler's order, the epoch's loss, the epoch total)
    assert counts["n"] <= math.ceil(steps / 4) + 3
    assert row["loss"] == row_ref["loss"]  # the loss summed on the device: same numbers


def test_ddp_flags_are_reduced_only_at_checks(data_root, tmp_path, monkeypatch):
    from bench.engine import distributed as bdist
    from bench.engine.run_control import _StopRequest

    t = _trainer(data_root, tmp_path / "d", augment=False)
    t.d = bdist.DistInfo(rank=0, world_size=2)  # as rank 0 of two identical ranks
    t.check_every = 3
    reduced: list[torch.device] = []

    def fake_sum(x: torch.Tensor) -> torch.Tensor:
        reduced.append(x.device)
        return x * 2

    monkeypatch.setattr(bdist, "all_reduce_sum", fake_sum)
    t._train_epoch(_StopRequest(True))
    steps = math.ceil(t.n_train / t.per_rank_batch)
    assert len(reduced) == math.ceil(steps / 3) + 1  # the checks + the epoch's loss total


def test_a_nan_between_checks_is_caught_at_the_next_check(data_root, tmp_path):
    from bench.engine.run_control import NonFiniteLossError, _StopRequest

    t = _trainer(data_root, tmp_path / "n", augment=False)
    t.check_every = 4
    real, calls = t.loss_fn, {"n": 0}

    def poisoned(logits, target, aux=()):
        calls["n"] += 1
        loss = real(logits, target, aux)
        return loss * float("nan") if calls["n"] == 2 else loss

    t.loss_fn = poisoned
    with pytest.raises(NonFiniteLossError, match=r"step 4 \(checked every 4 steps"):
        t._train_epoch(_StopRequest(True))


def test_deterministic_mode_defaults_off_on_cuda_and_is_recorded(monkeypatch):
    from bench.core.precision import deterministic_mode
    from bench.engine.determinism import _configure_backends

    assert deterministic_mode(None, "cpu") is True and deterministic_mode(None, "cuda") is False
    assert deterministic_mode(True, "cuda:0") is True and deterministic_mode(False, "cpu") is False
    assert TrainConfig.from_recipe("fair", data="x").deterministic is None
    before = torch.are_deterministic_algorithms_enabled()
    try:
        _configure_backends(True, "cpu")
        _configure_backends(False, "cpu")  # a later run in the same process
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)


def test_training_bf16_needs_native_support_on_the_gpu(monkeypatch):
    import bench.core.device as device
    import bench.engine.amp as amp

    cfg = TrainConfig.from_recipe("fair", data="x", amp="bf16")
    monkeypatch.setattr(device, "cuda_bf16_native", lambda device=None: False)
    used, note = amp._effective_amp(cfg, "cuda")
    assert used is None and "no native bf16" in note and note.endswith("training in fp32")
    monkeypatch.setattr(device, "cuda_bf16_native", lambda device=None: True)
    assert amp._effective_amp(cfg, "cuda") == ("bf16", None)
    assert amp._effective_amp(cfg.replace(amp="fp16"), "cuda") == ("fp16", None)


def test_init_from_env_makes_a_long_timeout_group_for_the_cache_wait(monkeypatch):
    from bench.engine import distributed as bdist

    made: dict = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(bdist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        bdist.dist, "init_process_group", lambda backend, **kw: made.update(pg=backend)
    )
    monkeypatch.setattr(bdist.dist, "new_group", lambda **kw: made.update(side=kw) or "side-group")
    monkeypatch.setattr(bdist, "info", lambda: bdist.DistInfo(0, 2, 0))
    monkeypatch.setattr(bdist, "_SLOW_GROUP", None)
    bdist.init_from_env("cpu")
    assert made["side"]["backend"] == "gloo"
    assert made["side"]["timeout"] >= timedelta(hours=1)  # NCCL's default is 10 minutes
    waited: list = []
    monkeypatch.setattr(bdist.dist, "barrier", lambda group=None: waited.append(group))
    bdist.barrier(slow=True)
    bdist.barrier()
    assert waited == ["side-group", None]


# --------------------------------------------------------------------------- augmentation


def _pairs(seed: int, b: int = 16, h: int = 40, w: int = 56, floating: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
    y = (torch.rand(b, 1, h, w, generator=g) > 0.5).to(torch.uint8)
    return (x.float() if floating else x), y


@pytest.mark.parametrize("floating", [False, True])
def test_sync_free_augmentation_equals_the_per_sample_path(floating):
    for seed in range(6):
        x, y = _pairs(seed, floating=floating)
        a = augment_batch(x, y, torch.Generator().manual_seed(seed), return_params=True)
        b = augment_batch(
            x, y, torch.Generator().manual_seed(seed), return_params=True, sync_free=True
        )
        assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])  # same draws, same order
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x, y = _pairs(0)
    assert torch.equal(  # fixed angle, (B, H, W) masks
        augment_batch(x, y[:, 0], torch.Generator().manual_seed(1), fixed_angle=90.0)[1],
        augment_batch(x, y[:, 0], torch.Generator().manual_seed(1), fixed_angle=90.0,
                      sync_free=True)[1],
    )  # fmt: skip


def test_sync_free_augmentation_reads_nothing_back(monkeypatch):
    def host_read(*a, **kw):
        raise AssertionError("a host read (a GPU sync)")

    x, y = _pairs(0)
    names = ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__",
             "cpu", "numpy", "any", "all")  # fmt: skip
    for name in names:
        monkeypatch.setattr(torch.Tensor, name, host_read)
    monkeypatch.setattr(torch, "nonzero", host_read)
    augment_batch(x, y, torch.Generator().manual_seed(0), sync_free=True)
    with pytest.raises(AssertionError, match="host read"):  # the CPU path does read
        augment_batch(x, y, torch.Generator().manual_seed(0), sync_free=False)


# --------------------------------------------------------------------------- speed


def test_warmup_runs_by_time_as_well_as_by_count():
    from bench.speed.timing import time_step

    calls, order = [], []
    times, _ = time_step(
        lambda: (calls.append(1), time.sleep(0.005)), "cpu", warmup=1, warmup_time_s=0.05,
        min_time_s=0.0, min_iters=2, before_timing=lambda: order.append(len(calls)),
    )  # fmt: skip
    assert len(times) == 2 and order[0] >= 8  # ~10 warm-up calls of 5 ms, then the reset
    assert len(calls) == order[0] + 2


def test_back_to_back_throughput_is_used_when_asked(monkeypatch):
    from bench.speed import steps, timing

    per_call = timing.back_to_back(lambda: time.sleep(0.002), "cpu", 3)
    assert 0.002 <= per_call < 0.05
    monkeypatch.setattr(steps, "_build_model", lambda name: nn.Conv2d(3, 1, 3, padding=1))
    monkeypatch.setattr(steps, "back_to_back", lambda step, device, iters: 0.5)
    info = types.SimpleNamespace(loss_weights=(1.0, ()))
    kw = dict(input_size=16, noisy_threshold=0.1, threads=1)
    t = {"warmup": 1, "min_time_s": 0.0, "min_iters": 3, "max_time_s": None}
    row = steps.measure_config("x", info, torch.device("cpu"), "inference", "fp32", False,
                                False, 4, timing={**t, "back_to_back": True}, **kw)  # fmt: skip
    assert row["throughput_img_s"] == 8.0 and row["throughput_method"] == "back-to-back"
    row = steps.measure_config("x", info, torch.device("cpu"), "inference", "fp32", False,
                                False, 4, timing=t, **kw)  # fmt: skip
    assert row["throughput_method"] == "median"  # CPU default: every call is synchronous


def test_peaks_reset_after_warmup_and_rss_delta_counts_the_model(monkeypatch):
    from bench.speed import memory, steps

    class SpikyWarmup(nn.Module):
        """A 64 MB buffer of its own; a 192 MB spike in its first call only (autotuning)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 3, padding=1)
            # fresh anonymous mappings: freed heap pages from earlier tests could be reused
            # without raising RSS
            self.own = mmap.mmap(-1, 64 * 2**20)
            np.frombuffer(self.own, dtype=np.uint8)[:] = 1  # touched: resident
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 1:
                mm = mmap.mmap(-1, 192 * 2**20)
                np.frombuffer(mm, dtype=np.uint8)[:] = 1
                del mm
            return self.conv(x)

    monkeypatch.setattr(steps, "_build_model", lambda name: SpikyWarmup())
    timing = {"warmup": 1, "min_time_s": 0.0, "min_iters": 3, "max_time_s": None}
    row = steps.measure_config(
        "x", types.SimpleNamespace(loss_weights=(1.0, ())), torch.device("cpu"), "inference",
        "fp32", False, False, 1, input_size=16, timing=timing, noisy_threshold=0.1, threads=1,
    )  # fmt: skip
    assert 60 < row["rss_delta_mb"] < 150, row  # the model's 64 MB, not the 192 MB warm-up spike
    # on CUDA the same hook resets the allocator's peak (mocked: no GPU here)
    seen: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: seen.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: seen.append("reset"))
    with memory.PeakRSS() as rss:
        steps._reset_peaks(torch.device("cuda"), rss)
    assert seen == ["sync", "reset"]


def test_fp32_rows_run_without_tf32_and_say_so(monkeypatch):
    from bench.speed import steps

    seen = []

    class Probe(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return super().forward(x)

    monkeypatch.setattr(steps, "_build_model", lambda name: Probe(3, 1, 3, padding=1))
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        row = steps.measure_config(
            "x", types.SimpleNamespace(loss_weights=(1.0, ())), torch.device("cpu"), "train",
            "fp32", False, False, 1, input_size=16, noisy_threshold=0.1, threads=1,
            timing={"warmup": 1, "min_time_s": 0.0, "min_iters": 2, "max_time_s": None},
        )  # fmt: skip
        assert seen and all(flags == (False, False) for flags in seen)
        assert row["tf32"] is False
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_run_speed_json_records_tf32_and_throughput(monkeypatch, tmp_path):
    import json

    from bench.speed import run, steps

    monkeypatch.setattr(steps, "_build_model", lambda name: nn.Conv2d(3, 1, 3, padding=1))
    monkeypatch.setattr(steps, "model_info", lambda name: types.SimpleNamespace(
        loss_weights=(1.0, ()), input_multiple=1, min_input=1))  # fmt: skip
    monkeypatch.setattr(steps, "_complexity", lambda name, size: "complexity skipped")
    run.run_speed(["x"], batch_sizes=(1,), modes=("inference",), min_time_s=0.0, min_iters=2,
                  warmup=1, input_size=16, out_dir=tmp_path, progress=False, peak="1,10",
                  isolate=False)  # fmt: skip
    data = json.loads(next(tmp_path.glob("speed-*.json")).read_text())
    meta = next(iter(data["runs"].values()))
    assert meta["tf32"]["cudnn_allow_tf32"] is False and meta["timing"]["warmup_time_s"] == 0.0
    assert data["rows"][0]["tf32"] is False and data["rows"][0]["rss_delta_mb"] is not None
    import pandas as pd

    from bench.speed.files import format_table

    assert "RSS +MB" in format_table(pd.DataFrame(data["rows"]))


def test_cudnn_and_cublas_alloc_failures_are_oom_other_cuda_errors_sticky():
    from bench.speed.variants import _is_cuda_error, _is_oom

    for msg in ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"):  # fmt: skip
        assert _is_oom(RuntimeError(msg)) and not _is_cuda_error(RuntimeError(msg))
    for msg in ("CUDA error: an illegal memory access was encountered",
                "CUDA error: device-side assert triggered",
                "CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, ...)`",
                "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"):  # fmt: skip
        assert _is_cuda_error(RuntimeError(msg)) and not _is_oom(RuntimeError(msg))
    assert not _is_cuda_error(ValueError("bad input")) and not _is_cuda_error(RuntimeError("x"))


def test_worker_is_replaced_after_a_sticky_cuda_error(monkeypatch):
    from bench.speed import worker as sw
    from bench.speed.variants import MeasurementError

    started: list[object] = []

    class FakeConn:
        def __init__(self, reply):
            self.reply = reply

        def send(self, msg):
            pass  # noqa: E704

        def recv(self):
            return self.reply  # noqa: E704

        def close(self):
            pass  # noqa: E704

    class FakeProc:
        exitcode = 0

        def is_alive(self):
            return True  # noqa: E704

        def join(self, timeout=None):
            pass  # noqa: E704

        def terminate(self):
            pass  # noqa: E704

    replies = iter([("cuda", "RuntimeError: CUDA error: an illegal memory access"), ("ok", 7)])

    def start(self) -> None:
        started.append(1)
        self._proc, self._conn = FakeProc(), FakeConn(next(replies))

    monkeypatch.setattr(sw.Worker, "_start", start)
    w = sw.Worker()
    with pytest.raises(MeasurementError, match="restarted"):
        w.call(pow, 2, 3)
    assert w._proc is None  # the poisoned process is gone ...
    assert w.call(pow, 2, 3) == 7 and len(started) == 2  # ... and a fresh one took over


@pytest.mark.slow
def test_real_worker_restarts_after_a_cuda_error_message():
    import os

    from bench.speed import worker as sw
    from bench.speed.variants import MeasurementError

    with sw.Worker() as w:
        pid = w.call(os.getpid)
        with pytest.raises(MeasurementError, match="restarted"):
            w.call(
                exec, "raise RuntimeError('CUDA error: an illegal memory access was encountered')"
            )
        assert w.call(os.getpid) != pid
        with pytest.raises(MeasurementError, match="ValueError"):
            w.call(int, "x")  # an ordinary error keeps the worker
        assert w.call(os.getpid) == w.call(os.getpid)


# --------------------------------------------------------------------------- roofline

#: real torch.cuda.get_device_name() strings -> (table label or None, fp32, bf16 TFLOPS, GB/s)
DEVICE_NAMES = {
    "NVIDIA H100 NVL": ("NVIDIA H100 NVL", 60.0, 835.5, 3900.0),
    "NVIDIA H100 80GB HBM3": ("NVIDIA H100 SXM", 67.0, 989.4, 3350.0),
    "NVIDIA H100 PCIe": ("NVIDIA H100 PCIe", 51.0, 756.5, 2000.0),
    "NVIDIA GH200 480GB": ("NVIDIA GH200 (96 GB HBM3)", 67.0, 989.4, 4000.0),
    "NVIDIA H200 NVL": ("NVIDIA H200 NVL", 60.0, 835.5, 4800.0),
    "NVIDIA H200": ("NVIDIA H200 SXM", 67.0, 989.4, 4800.0),
    "NVIDIA A100 80GB PCIe": ("NVIDIA A100 80GB PCIe", 19.5, 312.0, 1935.0),
    "NVIDIA A100-SXM4-80GB": ("NVIDIA A100 80GB SXM", 19.5, 312.0, 2039.0),
    "NVIDIA A100-SXM4-40GB": ("NVIDIA A100 40GB", 19.5, 312.0, 1555.0),
    "NVIDIA A100-PCIE-40GB": ("NVIDIA A100 40GB", 19.5, 312.0, 1555.0),
    "NVIDIA RTX A1000": None,
    "Tesla V100-SXM2-32GB": ("NVIDIA V100 SXM2", 15.7, None, 900.0),
    "Tesla V100-PCIE-16GB": ("NVIDIA V100 PCIe", 14.0, None, 900.0),
    "NVIDIA L4": ("NVIDIA L4", 30.3, 121.0, 300.0),
    "NVIDIA L40S": ("NVIDIA L40S", 91.6, 362.05, 864.0),
    "NVIDIA GeForce RTX 4090": ("NVIDIA GeForce RTX 4090", 82.6, 165.2, 1008.0),
    "NVIDIA GeForce RTX 4090 D": None,
    "Tesla T4": ("NVIDIA T4", 8.1, None, 320.0),
}


@pytest.mark.parametrize("name", sorted(DEVICE_NAMES))
def test_roofline_table_matches_real_device_names(name):
    from bench.cost.roofline import table_peak

    want = DEVICE_NAMES[name]
    fp32 = table_peak(name, "fp32", tf32=False)
    if want is None:
        assert fp32 is None, fp32  # unknown: measured on the device instead of a wrong row
        return
    label, tflops, bf16, gbps = want
    assert fp32 is not None and label in fp32.source
    assert (fp32.tflops, fp32.gbps) == (tflops, gbps)
    got_bf16 = table_peak(name, "bf16")
    assert (got_bf16.tflops if got_bf16 else None) == bf16


def test_resolve_peak_for_rows_without_tf32_uses_the_cuda_core_rate(monkeypatch):
    from bench.core import env
    from bench.cost import roofline

    monkeypatch.setattr(env, "device_name", lambda dev: "NVIDIA H100 80GB HBM3")
    assert roofline.resolve_peak("cuda", "fp32", tf32=False).tflops == 67.0
    assert roofline.resolve_peak("cuda", "fp32", tf32=True).tflops == 494.7


# --------------------------------------------------------------------------- gpu-check


def test_gpu_check_skips_every_row_without_a_gpu(monkeypatch, capsys):
    from bench.cli import main
    from bench.jobs import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows = gpu_check.run_gpu_check()
    assert [r.name for r in rows] == [c[0] for c in gpu_check.CHECKS]
    assert all(r.status == "skip" and "no GPU" in r.detail for r in rows)
    assert main(["gpu-check"]) == 0
    out = capsys.readouterr().out
    assert "every row skipped" in out and "FAIL" not in out
    with pytest.raises(ValueError, match="unknown check"):
        gpu_check.run_gpu_check(only=["nope"])


def test_gpu_check_turns_a_failing_check_into_a_fail_row(monkeypatch):
    from bench.jobs import gpu_check

    def broken(dev: torch.device) -> str:
        raise AssertionError("wrong")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(
        "bench.core.device.resolve_device", lambda d, allow=None: torch.device("cpu")
    )
    monkeypatch.setattr(gpu_check, "CHECKS", [("a", "works", lambda d: "fine"),
                                              ("b", "breaks", broken)])  # fmt: skip
    rows = gpu_check.run_gpu_check()
    assert [(r.name, r.status) for r in rows] == [("a", "pass"), ("b", "fail")]
    assert "AssertionError: wrong" in rows[1].detail
    assert "1 passed, 1 failed" in gpu_check.format_checks(rows)
