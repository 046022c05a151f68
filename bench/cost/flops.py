"""Exact MAC counting at the aten dispatch level: ``analyze(model) -> Complexity``.

Why a hand-written ``TorchDispatchMode`` and not ``FlopCounterMode`` with a
``custom_mapping``: FlopCounterMode drops every op it has no formula for
without a trace, while segbench must list such ops by name; it also has no
bucket for non-MAC work and no record of activation memory. The module
tracking, op decomposition and shape formulas follow the same ideas.

Units:
- ``macs``: multiply-accumulates of conv (any dims, groups, transposed), linear,
  mm/bmm/matmul/einsum and scaled-dot-product attention, including the fused inference
  fast paths of ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``. FLOPs = 2 x MACs.
  An op with neither a rule nor a decomposition is listed in ``unsupported_ops`` (the
  complexity table then says ``incomplete``: the counts are lower bounds).
- ``other_flops``: everything else that computes (normalisation, activations,
  softmax, pooling, interpolation, reductions, elementwise arithmetic, bias
  adds), one FLOP per elementary operation with the per-element costs in the
  tables below (fvcore's conventions where fvcore has one).
- ``activation_bytes``: bytes of every tensor the forward's ops allocate
  (views and in-place results excluded), functional ops included.
  ``module_output_bytes``: bytes of the outputs of leaf modules (torchinfo's
  "forward pass size" convention, which misses functional ops).

The counting rules, how they differ from thop / fvcore / FlopCounterMode and the probe ops
are written up in ``docs/counting.md``.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["Complexity", "ModuleCost", "ZERO_COST_OPS", "analyze", "count_params", "op_rules"]

from bench.cost.flop_rules import (  # noqa: F401  (_RULES: read by tests and checks)
    _MAC_OPS,
    _NON_ALLOCATING,
    _RULES,
    _ZERO,
    ZERO_COST_OPS,
    _first_tensor,
    _prod,
    op_rules,
)

aten = torch.ops.aten


# --- the counter ----------------------------------------------------------------------------


def _tensor_bytes(obj: Any) -> int:
    return sum(
        t.numel() * t.element_size() for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)
    )


class _CountingMode(TorchDispatchMode):
    """Counts every aten op of the forward and attributes it to the active module names."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.macs_by_op: Counter[str] = Counter()
        self.other_by_op: Counter[str] = Counter()
        self.unsupported: Counter[str] = Counter()
        self.module_macs: Counter[str] = Counter()
        self.module_other: Counter[str] = Counter()
        self.alloc_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        packet = func._overloadpacket
        rule = _RULES.get(packet)
        if rule is None and packet not in _ZERO:
            # A composite op without a rule: count its pieces instead (re-entering the mode
            # so they are seen), as FlopCounterMode does.
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        name = str(packet)
        cost = rule(args, kwargs, out) if rule is not None else None
        if cost is None and packet not in _ZERO:
            self.unsupported[name] += 1
        elif cost is not None:
            macs, other = cost
            if macs:
                self.macs_by_op[name] += macs
            if other:
                self.other_by_op[name] += other
            for mod in set(self.stack):
                self.module_macs[mod] += macs
                self.module_other[mod] += other
        if packet not in _NON_ALLOCATING and not any(
            r.alias_info is not None for r in func._schema.returns
        ):
            self.alloc_bytes += _tensor_bytes(out)
        return out


@dataclass
class ModuleCost:
    """Inclusive cost of one named submodule ("" is the whole model)."""

    name: str
    type: str
    depth: int
    params: int
    macs: int = 0
    other_flops: int = 0
    output_bytes: int = 0
    calls: int = 0


@dataclass
class Complexity:
    """Parameter and compute counts of one model at one input shape (see module docstring)."""

    input_shape: tuple[int, ...]
    device: str
    params_total: int
    params_unique: int
    params_trainable: int
    macs: int
    other_flops: int
    activation_bytes: int
    module_output_bytes: int
    per_module: dict[str, ModuleCost] = field(default_factory=dict)
    macs_by_op: dict[str, int] = field(default_factory=dict)
    other_flops_by_op: dict[str, int] = field(default_factory=dict)
    unsupported_ops: dict[str, int] = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def flops(self) -> int:
        """Strict FLOPs of the MAC bucket (2 per MAC)."""
        return 2 * self.macs

    def breakdown(self, depth: int | None = None) -> Any:
        """Per-module tree as a pandas DataFrame, modules deeper than ``depth`` left out."""
        import pandas as pd

        rows = []
        for cost in self.per_module.values():
            if depth is not None and cost.depth > depth:
                continue
            label = cost.name.rsplit(".", 1)[-1] if cost.name else "(model)"
            rows.append(
                {
                    "module": "  " * cost.depth + label,
                    "name": cost.name,
                    "type": cost.type,
                    "params": cost.params,
                    "MACs": cost.macs,
                    "% MACs": 100.0 * cost.macs / self.macs if self.macs else 0.0,
                    "other FLOPs": cost.other_flops,
                    "output bytes": cost.output_bytes,
                    "calls": cost.calls,
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self, per_module: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        if not per_module:
            d.pop("per_module")
        return d


def count_params(model: nn.Module) -> tuple[int, int, int]:
    """(total, unique storage, trainable) parameter counts.

    total: ``sum(p.numel() for p in model.parameters())`` (the papers' convention; a
    Parameter object reachable twice counts once). unique: storage elements covered by any
    parameter, so a Parameter that is a view of another's memory (MALUNet's transposed IEA
    weights) adds nothing.
    """
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    groups: dict[Any, list[torch.Tensor]] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        # Meta tensors have no storage to compare: each Parameter object stands alone.
        key = id(p) if p.device.type == "meta" else (p.device, p.untyped_storage().data_ptr())
        group = groups.setdefault(key, [])
        if not any(q is p for q in group):
            group.append(p)
    unique = 0
    for group in groups.values():
        if len(group) == 1:
            unique += group[0].numel()
            continue
        # Several views of one storage: mark the element positions each view covers.
        size = group[0].untyped_storage().nbytes() // group[0].element_size()
        covered = torch.zeros(size, dtype=torch.bool)
        positions = torch.arange(size)
        for p in group:
            covered[positions.as_strided(p.shape, p.stride(), p.storage_offset())] = True
        unique += int(covered.sum())
    return total, unique, trainable


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _parse_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    ok = (
        isinstance(input_shape, Sequence)
        and len(input_shape) > 0
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape)
    )
    if not ok:
        raise ValueError(
            f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}"
        )
    return tuple(input_shape)


def analyze(
    model: nn.Module,
    input_shape: Sequence[int] = (1, 3, 256, 256),
    device: str | torch.device = "cpu",
    inputs: tuple[torch.Tensor, ...] | None = None,
    train: bool = False,
) -> Complexity:
    """Count parameters, MACs, other FLOPs and activation memory of one eval-mode forward.

    The model is left as it was: training flags are restored, hooks removed, nothing
    registered on it; if ``device`` differs from the model's, a copy is moved there
    (``device="meta"`` counts shapes only, without computing). ``inputs`` overrides
    ``input_shape`` for models taking several tensors. ``train=True`` counts the forward
    of a training step instead (train mode, autograd on: dropout runs, no inference fast
    paths such as fused multi-head attention), on a copy so running statistics are kept.
    Ops without a rule are listed in ``unsupported_ops``: the counts are then lower bounds.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dev = torch.device(device)
    total, unique, trainable = count_params(model)

    work = model
    if _model_device(model) != dev or train:
        work = copy.deepcopy(model).to(dev)
    if inputs is None:
        shape = _parse_shape(input_shape)
        dtype = _model_dtype(work)
        if dev.type == "meta":
            inputs = (torch.empty(shape, dtype=dtype, device=dev),)
        else:
            # A private generator keeps the global RNG state untouched.
            gen = torch.Generator().manual_seed(0)
            inputs = (torch.randn(shape, generator=gen, dtype=dtype).to(dev),)
    else:
        inputs = tuple(t.to(dev) for t in inputs)
        shape = tuple(inputs[0].shape)

    names = {m: n for n, m in work.named_modules()}
    per_module = {
        n: ModuleCost(
            name=n,
            type=type(m).__name__,
            depth=0 if not n else n.count(".") + 1,
            params=sum(p.numel() for p in m.parameters()),
        )
        for m, n in names.items()
    }
    leaves = {n for m, n in names.items() if next(m.children(), None) is None}
    stack: list[str] = []
    leaf_bytes = 0

    def pre_hook(mod: nn.Module, args: Any) -> None:
        stack.append(names[mod])

    def post_hook(mod: nn.Module, args: Any, output: Any) -> None:
        nonlocal leaf_bytes
        name = stack.pop()
        nbytes = _tensor_bytes(output)
        cost = per_module[name]
        cost.output_bytes += nbytes
        cost.calls += 1
        if name in leaves:
            leaf_bytes += nbytes

    training = {m: m.training for m in work.modules()}
    handles = []
    mode = _CountingMode(stack)
    try:
        for mod in names:
            handles.append(mod.register_forward_pre_hook(pre_hook))
            handles.append(mod.register_forward_hook(post_hook))
        work.train(train)
        with torch.set_grad_enabled(train), mode:
            work(*inputs)
    finally:
        for h in handles:
            h.remove()
        for mod, flag in training.items():
            mod.training = flag

    for name, cost in per_module.items():
        cost.macs = mode.module_macs.get(name, 0)
        cost.other_flops = mode.module_other.get(name, 0)
    return Complexity(
        input_shape=shape,
        device=str(dev),
        params_total=total,
        params_unique=unique,
        params_trainable=trainable,
        macs=sum(mode.macs_by_op.values()),
        other_flops=sum(mode.other_by_op.values()),
        activation_bytes=mode.alloc_bytes,
        module_output_bytes=leaf_bytes,
        per_module=per_module,
        macs_by_op=dict(mode.macs_by_op.most_common()),
        other_flops_by_op=dict(mode.other_by_op.most_common()),
        unsupported_ops=dict(mode.unsupported.most_common()),
    )
