"""The one AdamW builder of segbench (training and the speed benchmark's training step).

Some models register two Parameters that share one storage: MALUNet's IEA blocks keep
``linear_1.weight`` as a transposed view of ``linear_0.weight`` (see ``models/malunet.py``).
PyTorch's multi-tensor (``foreach``) and ``fused`` AdamW kernels, the default for CUDA
parameters, update every parameter of a group in one launch and do not check for
overlapping memory: both views would be read and written concurrently and updates lost
at random. The for-loop implementation (the CPU default) steps them one after the other,
deterministically, as the authors' code does on a CPU. So every parameter that shares
storage with another goes into a group of its own with ``foreach=False, fused=False`` on
every device; the other parameters keep PyTorch's default kernel choice.

Grouping does not change any value on a CPU: the for-loop kernel updates each parameter
independently, and the aliased ones keep their relative (model) order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "adamw",
    "adapt_optimizer_state",
    "aliased_parameter_names",
    "parameter_groups",
]

#: the group option that marks the aliased-parameter group (for state conversion)
_ALIAS_KEYS = {"foreach": False, "fused": False}


def _storage_key(p: torch.Tensor) -> tuple[str, int] | None:
    if p.numel() == 0 or p.device.type == "meta":
        return None
    return (str(p.device), p.untyped_storage().data_ptr())


def aliased_parameter_names(model: nn.Module) -> list[list[str]]:
    """Groups (in model order) of parameter names that share one storage; [] when none.

    MALUNet with its tied memory gives six pairs ``[...linear_0.weight, ...linear_1.weight]``.
    """
    by_storage: dict[tuple[str, int], list[str]] = {}
    for name, p in model.named_parameters():
        key = _storage_key(p)
        if key is not None:
            by_storage.setdefault(key, []).append(name)
    return [names for names in by_storage.values() if len(names) > 1]


def parameter_groups(params: Iterable[nn.Parameter]) -> list[dict[str, Any]]:
    """Optimizer groups: the parameters that share storage with another in their own group
    with ``foreach=False, fused=False`` (never one multi-tensor launch), the others first
    with PyTorch's defaults. Empty groups are left out; order within a group is kept."""
    params = list(params)
    count: dict[tuple[str, int], int] = {}
    for p in params:
        key = _storage_key(p)
        if key is not None:
            count[key] = count.get(key, 0) + 1
    shared = [p for p in params if count.get(_storage_key(p), 0) > 1]  # type: ignore[arg-type]
    ids = {id(p) for p in shared}
    plain = [p for p in params if id(p) not in ids]
    groups: list[dict[str, Any]] = []
    if plain:
        groups.append({"params": plain})
    if shared:
        groups.append({"params": shared, **_ALIAS_KEYS})
    return groups


def adamw(
    model: nn.Module,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    foreach: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``model.parameters()`` grouped by :func:`parameter_groups`.

    ``foreach`` applies to the unshared parameters only (None: PyTorch's choice, i.e.
    multi-tensor on CUDA, for-loop on CPU); the shared ones always use the for-loop kernel.
    """
    return torch.optim.AdamW(
        parameter_groups(model.parameters()),
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        foreach=foreach,
    )


def adapt_optimizer_state(
    saved: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module
) -> dict[str, Any]:
    """``saved`` (an optimizer state_dict) made loadable into ``optimizer``.

    Checkpoints written before the aliased parameters had a group of their own hold one
    group over ``model.parameters()`` in model order; this maps their per-parameter state
    onto the current groups (same hyper-parameters, the alias group's kernel options).
    A state dict that already matches is returned unchanged.
    """
    groups = optimizer.param_groups
    if len(saved.get("param_groups", [])) == len(groups) or len(saved["param_groups"]) != 1:
        return saved
    order = {id(p): i for i, p in enumerate(model.parameters())}
    old = saved["param_groups"][0]
    if len(old["params"]) != len(order):
        return saved  # not the old layout of this model: let load_state_dict report it
    state: dict[int, Any] = {}
    new_groups: list[dict[str, Any]] = []
    k = 0
    for g in groups:
        ids = []
        for p in g["params"]:
            old_id = old["params"][order[id(p)]]
            if old_id in saved["state"]:
                state[k] = saved["state"][old_id]
            ids.append(k)
            k += 1
        extra = {key: g[key] for key in _ALIAS_KEYS if g.get(key) is False}
        new_groups.append({**{key: v for key, v in old.items() if key != "params"}, **extra,
                           "params": ids})  # fmt: skip
    return {"state": state, "param_groups": new_groups}
