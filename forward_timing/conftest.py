"""Forward-pass timings of every registered model (pytest-benchmark), saved per commit to
catch a speed regression of the model code.

Not the benchmark itself: ``segbench benchmark`` (``nox -s benchmark``, the ``bench``
package) measures cost, speed and accuracy for the results; this folder only compares one
forward pass between commits on one machine. Run it with ``nox -s forward-timing``
(``pytest forward_timing -o addopts= --benchmark-only --benchmark-autosave``); it is not
part of ``nox -s tests``. Each run is saved as
JSON under ``.benchmarks/<machine>/NNNN_<commit>_<date>.json`` (git-ignored).

Settings (environment variables, since nox passes pytest arguments through):

* ``SEGBENCH_PERF_DEVICE``: ``cpu`` (default) or ``cuda``;
* ``SEGBENCH_PERF_THREADS``: torch CPU threads (default: torch's current count);
* ``SEGBENCH_PERF_MODELS``: comma-separated wildcard patterns (default: all models);
* ``SEGBENCH_PERF_SIZE``: square input side (default 256, i.e. 1x3x256x256).

Device, threads, torch version and input shape are written into each saved
file's ``machine_info`` / ``extra_info``, so runs with different settings are not
mistaken for one another.

Comparing two runs:

* list saved runs: ``pytest-benchmark list``;
* compare two saved runs (ids or file-name prefixes)::

      pytest-benchmark compare 0001 0002 --columns=median,iqr,ops --sort=name

* compare the current run against a saved one while it runs, failing on a
  regression of the median by more than 10%::

      nox -s forward-timing -- --benchmark-compare=0001 --benchmark-compare-fail=median:10%

  (``--benchmark-compare`` without a value compares against the latest saved run.)

Compare only runs from the same machine, device and thread count; on a shared
or loaded machine repeat a run before believing a difference.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _device() -> torch.device:
    text = os.environ.get("SEGBENCH_PERF_DEVICE", "cpu")
    if text not in ("cpu", "cuda") and not text.startswith("cuda:"):
        raise pytest.UsageError(f"SEGBENCH_PERF_DEVICE must be cpu or cuda[:N], got {text!r}")
    dev = torch.device(text)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("SEGBENCH_PERF_DEVICE=cuda but torch.cuda.is_available() is False")
    return dev


def _threads() -> int | None:
    text = os.environ.get("SEGBENCH_PERF_THREADS")
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise pytest.UsageError(f"SEGBENCH_PERF_THREADS must be a positive integer, got {text!r}")
    return int(text)


def _size() -> int:
    text = os.environ.get("SEGBENCH_PERF_SIZE", "256")
    if not text.isdigit() or int(text) < 1:
        raise pytest.UsageError(f"SEGBENCH_PERF_SIZE must be a positive integer, got {text!r}")
    return int(text)


@pytest.fixture(scope="session")
def perf_device() -> torch.device:
    """Device the forward passes run on (``SEGBENCH_PERF_DEVICE``)."""
    return _device()


@pytest.fixture(scope="session")
def perf_size() -> int:
    """Square input side (``SEGBENCH_PERF_SIZE``)."""
    return _size()


@pytest.fixture(scope="session", autouse=True)
def fixed_threads() -> Iterator[int]:
    """Fix torch's CPU thread count for the whole session; restored afterwards."""
    from bench.core.measure import pinned_threads

    with pinned_threads(_threads()) as n:
        yield n


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    from bench.core.env import device_name

    dev = _device()
    machine_info["segbench"] = {
        "device": dev.type,
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "threads": _threads() or torch.get_num_threads(),
        "input_size": _size(),
    }
