"""bench.core.precision: the one place for dtype names, autocast and the effective
amp / channels_last / deterministic settings that training and scoring share."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.core.precision import (
    DTYPES,
    amp_problem,
    autocast_context,
    autocast_dtype,
    can_autocast,
    deterministic_mode,
    effective_channels_last,
    memory_format,
    torch_dtype,
)


def test_names_map_to_torch_dtypes_and_bad_names_are_refused():
    assert [torch_dtype(d) for d in DTYPES] == [torch.float32, torch.bfloat16, torch.float16]
    assert autocast_dtype("fp32") is None and autocast_dtype(None) is None
    assert autocast_dtype("bf16") == "bf16"
    for bad in ("int8", "float16"):
        with pytest.raises(ValueError, match="fp32, bf16, fp16"):
            torch_dtype(bad)
        with pytest.raises(ValueError, match=bad):
            autocast_dtype(bad)


def test_which_autocast_each_device_offers():
    assert can_autocast("cpu", "bf16") and not can_autocast("cpu", "fp16")
    assert can_autocast("cuda:1", "fp16") and can_autocast("cuda", "bf16")
    assert not can_autocast("meta", "bf16")
    assert amp_problem("cpu", "fp32") is None and amp_problem("cpu", "bf16") is None
    assert "fp16 autocast is not offered on CPU" in amp_problem("cpu", "fp16")
    assert "not offered on meta" in amp_problem("meta", "bf16")


def test_bf16_on_a_gpu_without_native_bf16_is_refused(monkeypatch):
    import bench.core.device as device

    monkeypatch.setattr(device, "cuda_bf16_native", lambda device=None: False)
    assert "no native bf16" in amp_problem("cuda", "bf16")
    assert amp_problem("cuda", "fp16") is None
    monkeypatch.setattr(device, "cuda_bf16_native", lambda device=None: True)
    assert amp_problem("cuda", "bf16") is None


def test_autocast_context_runs_only_what_the_device_offers():
    a = torch.rand(4, 4)
    with autocast_context("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    for amp in (None, "fp32", "fp16"):  # fp16 on a CPU: no autocast at all
        with autocast_context("cpu", amp):
            assert (a @ a).dtype == torch.float32


def test_channels_last_and_deterministic_defaults_follow_the_device():
    assert effective_channels_last(None, "cpu") and not effective_channels_last(None, "cuda:0")
    assert effective_channels_last(True, "cuda") and not effective_channels_last(False, "cpu")
    assert memory_format(True) is torch.channels_last
    assert memory_format(False) is torch.contiguous_format
    assert deterministic_mode(None, "cpu") and not deterministic_mode(None, "cuda")
    assert deterministic_mode(True, "cuda") and not deterministic_mode(False, "cpu")


def test_scoring_a_run_asks_the_same_rules_as_training(tmp_path):
    """``segbench evaluate`` sets a run's model up as its own test did: the precision
    note, the memory format and the deterministic default come from core.precision."""
    from bench.engine import run_eval
    from bench.engine.checkpoints import _save_checkpoint
    from models import create_model

    notes: list[str] = []
    assert run_eval._autocast("fp16", "cpu", notes) is None and "scored in fp32" in notes[0]
    assert run_eval._autocast("bf16", "cpu", []) == "bf16"
    assert run_eval._autocast("fp32", "cpu", []) is None
    ck = tmp_path / "best.pt"
    _save_checkpoint(ck, {"model": create_model("unet", base_width=2).state_dict()})
    before = torch.are_deterministic_algorithms_enabled()
    try:
        # left unset (None): channels_last and deterministic on the CPU, as in training
        for recorded, want in ((None, True), (False, False)):
            config = {"channels_last": recorded, "deterministic": recorded}
            source = run_eval.EvalSource(ck, config=config)
            settings = {"model": "unet", "model_kwargs": {"base_width": 2}}
            model = run_eval._trained_model(source, settings, "cpu")
            w = next(p for p in model.parameters() if p.dim() == 4)
            assert w.is_contiguous(memory_format=torch.channels_last) is want
            assert torch.are_deterministic_algorithms_enabled() is want
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)


def test_importing_the_names_does_not_import_torch():
    """engine.config (read by the report and sweep definitions, which never need torch)
    takes its amp names from core.precision: that import must stay torch-free."""
    code = "import sys, bench.engine.config, bench.core.precision; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
