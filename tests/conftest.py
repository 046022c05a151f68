"""Shared fixtures. Tests never touch the network and skip cleanly without ../shared."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", str(Path(__file__).parent / ".no-torch-home"))
# Caches and generated split files of the tests go to a throw-away folder, never into the
# user's ~/.cache/segbench (subprocesses started by tests inherit it).
os.environ["SEGBENCH_CACHE"] = tempfile.mkdtemp(prefix="segbench-test-cache-")
atexit.register(shutil.rmtree, os.environ["SEGBENCH_CACHE"], True)

SHARED = Path(
    os.environ.get("SEGBENCH_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")
)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (or $SEGBENCH_SHARED); skips when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"reference material not found at {SHARED} (only present on dev machines)")
    return SHARED.resolve()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: OpenMP spin-waits cost more than they give here
    yield
    torch.set_num_threads(n)
