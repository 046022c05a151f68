"""Determinism: seeding, backend settings and RNG states saved into and restored from checkpoints."""

from __future__ import annotations

import os
import random
import warnings
from typing import Any

import numpy as np
import torch


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _configure_backends(deterministic: bool, device: str) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA backward kernels (e.g. grid_sample) have no
        # deterministic version; they warn instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:  # process-wide: an earlier run in this process must not leave it on
        torch.use_deterministic_algorithms(False)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def _backend_settings() -> dict[str, Any]:
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }


def _cuda_index(device: str | torch.device | None) -> int | None:
    """The CUDA device index training runs on, or None when it does not run on CUDA."""
    if device is None:
        return None
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return dev.index if dev.index is not None else torch.cuda.current_device()


def _rng_state(device: str | torch.device | None = None) -> dict[str, Any]:
    """All global RNG states, in types ``torch.load(weights_only=True)`` accepts.

    CUDA: the state of the training ``device`` only (``cuda_device`` records its index),
    not ``get_rng_state_all()`` of every visible GPU: a run resumed with fewer visible
    GPUs (a sweep cell pinned to one) could not restore that list.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }
    index = _cuda_index(device)
    if index is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(index)
        state["cuda_device"] = index
    return state


def _set_rng_state(state: dict[str, Any], device: str | torch.device | None = None) -> None:
    """Restore :func:`_rng_state`'s states; the CUDA one onto the training ``device``
    (whatever its index was when saved: the stream belongs to the run, not the GPU)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    index = _cuda_index(device)
    cuda = state.get("cuda")
    if cuda is None or index is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):  # checkpoints before this fix: one per visible GPU
        if index >= len(cuda):
            warnings.warn(
                f"checkpoint holds CUDA RNG states of {len(cuda)} GPU(s), none for cuda:{index}: "
                "the CUDA random stream restarts",
                stacklevel=2,
            )
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, index)


def _loaded() -> bool:
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1) + 0.5
    except OSError:
        return False


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
