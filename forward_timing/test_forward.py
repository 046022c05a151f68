"""Forward-pass time of each registered model at 1x3xSxS (fp32, eval, inference mode).

See ``forward_timing/conftest.py`` for settings and for comparing saved runs.
"""

from __future__ import annotations

import os

import pytest
import torch


def _model_names() -> list[str]:
    from models import list_models

    return list_models(os.environ.get("SEGBENCH_PERF_MODELS") or None)


@pytest.mark.parametrize("name", _model_names())
def test_forward(
    benchmark, name: str, perf_device: torch.device, perf_size: int, fixed_threads: int
) -> None:
    from models import check_input_size, create_model, model_info

    dev, size = perf_device, perf_size
    info = model_info(name)
    check_input_size(size, size, info.input_multiple, info.min_input, model=name)
    torch.manual_seed(0)
    model = create_model(name).eval().to(dev)
    x = torch.randn(1, 3, size, size, device=dev)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            out = model(x)
        if dev.type == "cuda":  # time the work, not the launch
            torch.cuda.synchronize(dev)
        return out

    for _ in range(2):  # warm-up: allocator, oneDNN/cuDNN kernel selection
        forward()
    benchmark.group = f"forward 1x3x{size}x{size} {dev.type}"
    benchmark.extra_info.update(
        model=name, device=dev.type, threads=fixed_threads, input_shape=[1, 3, size, size],
        dtype="fp32", torch=torch.__version__,
    )  # fmt: skip
    out = benchmark(forward)
    assert out.shape == (1, 1, size, size)
