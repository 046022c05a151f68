"""Exact MAC counting at the aten dispatch level: ``analyze(model) -> Complexity``.

Why a hand-written ``TorchDispatchMode`` and not ``FlopCounterMode`` with a
``custom_mapping``: FlopCounterMode drops every op it has no formula for
without a trace, while segbench must list such ops by name; it also has no
bucket for non-MAC work and no record of activation memory. The module
tracking, op decomposition and shape formulas follow the same ideas.

Units:
- ``macs``: multiply-accumulates of conv (any dims, groups, transposed), linear,
  mm/bmm/matmul/einsum and scaled-dot-product attention. FLOPs = 2 x MACs.
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
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["Complexity", "ModuleCost", "ZERO_COST_OPS", "analyze", "count_params", "op_rules"]

aten = torch.ops.aten

# (macs, other_flops) for one call, or None when the rule cannot handle these arguments.
Rule = Callable[[tuple, dict, Any], "tuple[int, int] | None"]


def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def _first_tensor(out: Any) -> torch.Tensor:
    return (
        out
        if isinstance(out, torch.Tensor)
        else next(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
    )


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


# --- MAC rules ------------------------------------------------------------------------------


def _conv(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    # aten.convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding,
    # groups). Weight holds (C_out, C_in/groups, *k), or (C_in, C_out/groups, *k) transposed,
    # so prod(weight) per position covers grouped and depthwise convs. A transposed conv does
    # that work once per INPUT position (thop uses the output size: stride^d too many).
    x, w = args[0], args[1]
    bias = _arg(args, kwargs, 2, "bias")
    transposed = bool(_arg(args, kwargs, 6, "transposed", False))
    y = _first_tensor(out)
    positions = x.shape[2:] if transposed else y.shape[2:]
    macs = x.shape[0] * _prod(positions) * _prod(w.shape)
    return macs, (y.numel() if bias is not None else 0)


def _matmul_like(a_index: int, bias: bool) -> Rule:
    # Every output element is a K-long dot product; out.numel() * K also covers broadcasting.
    def rule(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        a = args[a_index]
        k = a.shape[-1]
        y = _first_tensor(out)
        return y.numel() * k, (y.numel() if bias else 0)

    return rule


def _linear(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    y = _first_tensor(out)
    has_bias = _arg(args, kwargs, 2, "bias") is not None
    return y.numel() * args[0].shape[-1], (y.numel() if has_bias else 0)


def _sdpa_cost(
    q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int], seq_dim: int
) -> tuple[int, int]:
    # QK^T and AV: batch*heads*L*S*(E + Ev) MACs. Other: the two scalings of q and k (the math
    # path multiplies both by sqrt(scale)) and softmax over the L x S scores, so that the
    # fused kernels and the decomposed path give the same other-FLOPs.
    heads_batch = _prod(q_shape[:-1]) // q_shape[seq_dim]
    seq_q, seq_k = q_shape[seq_dim], k_shape[seq_dim]
    e, ev = q_shape[-1], v_shape[-1]
    scores = heads_batch * seq_q * seq_k
    macs = scores * (e + ev)
    k_elems = heads_batch * seq_k * e
    other = _prod(q_shape) + k_elems + _SOFTMAX_FLOPS * scores
    return macs, other


def _sdpa_bhle(args: tuple, kwargs: dict, out: Any) -> tuple[int, int] | None:
    q, k, v = args[:3]
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return None
    return _sdpa_cost(q.shape, k.shape, v.shape, seq_dim=2)


def _sdpa_blhe(args: tuple, kwargs: dict, out: Any) -> tuple[int, int] | None:
    # _flash_attention_forward / _efficient_attention_forward take (B, L, H, E); with
    # cumulative sequence lengths (varlen) the batch is packed and the count needs the offsets.
    q, k, v = args[:3]
    if q.dim() != 4 or _arg(args, kwargs, 3, "cum_seq_q") is not None:
        return None
    return _sdpa_cost(q.shape, k.shape, v.shape, seq_dim=1)


# --- other-FLOP rules -----------------------------------------------------------------------

_SOFTMAX_FLOPS = 5  # max, subtract, exp, sum, divide per element


def _per_output(cost: int) -> Rule:
    def rule(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        return 0, cost * _first_tensor(out).numel()

    return rule


def _per_input(cost: int) -> Rule:
    def rule(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        return 0, cost * args[0].numel()

    return rule


def _batch_norm(training_index: int | None, weight_index: int = 1) -> Rule:
    # fvcore's convention: inference = scale (+ shift with affine); training = 4 (5 with affine).
    def rule(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        training = (
            bool(_arg(args, kwargs, training_index, "training"))
            if training_index is not None
            else False
        )
        affine = _arg(args, kwargs, weight_index, "weight") is not None
        per = (5 if affine else 4) if training else (2 if affine else 1)
        return 0, per * args[0].numel()

    return rule


def _norm(weight_index: int) -> Rule:
    # group/layer norm: 4 FLOPs per element for statistics and normalisation, +1 with affine.
    def rule(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        affine = _arg(args, kwargs, weight_index, "weight") is not None
        return 0, (5 if affine else 4) * args[0].numel()

    return rule


def _pool(dims: int) -> Rule:
    # Each output element compares or sums a full window; aten may pass one size for all dims.
    def rule(args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        kernel = _arg(args, kwargs, 1, "kernel_size")
        kernel = [kernel] if isinstance(kernel, int) else list(kernel)
        if len(kernel) == 1:
            kernel = kernel * dims
        return 0, _first_tensor(out).numel() * _prod(kernel)

    return rule


# Elementwise ops: one FLOP per output element (activations included; a GELU costs more
# instructions, but conventions differ and papers never count these).
_ELEMENTWISE = """
    add sub rsub mul div neg abs reciprocal pow sqrt rsqrt exp exp2 expm1 log log2 log10
    log1p sin cos tan tanh sigmoid erf erfc sign floor ceil round trunc frac square
    maximum minimum fmax fmin clamp clamp_min clamp_max where relu relu6 gelu silu mish
    hardswish hardsigmoid hardtanh leaky_relu elu celu selu softplus softshrink hardshrink
    threshold log_sigmoid_forward _prelu_kernel glu logit xlogy remainder fmod eq ne lt le
    gt ge logical_and logical_or logical_not logical_xor bitwise_and bitwise_or
    bitwise_not masked_fill lerp nan_to_num isnan isinf atan2 hypot
""".split()
_ELEMENTWISE_2 = ["addcmul", "addcdiv"]  # a product/quotient and an add per element
_REDUCTIONS = """
    sum mean amax amin max min prod var std var_mean std_mean logsumexp norm
    linalg_vector_norm argmax argmin any all cumsum cumprod aminmax
""".split()
# Interpolation: FLOPs per output element; nearest and bilinear follow fvcore, the others
# extend it (2^d neighbours for d-linear, 4x4 for bicubic).
_UPSAMPLE = {
    "upsample_nearest1d": 1,
    "upsample_nearest2d": 1,
    "upsample_nearest3d": 1,
    "_upsample_nearest_exact1d": 1,
    "_upsample_nearest_exact2d": 1,
    "_upsample_nearest_exact3d": 1,
    "upsample_linear1d": 2,
    "upsample_bilinear2d": 4,
    "_upsample_bilinear2d_aa": 4,
    "upsample_trilinear3d": 8,
    "upsample_bicubic2d": 16,
    "_upsample_bicubic2d_aa": 16,
    "grid_sampler_2d": 4,
    "grid_sampler_3d": 8,
}

# Ops that move, alias, create or copy memory but compute nothing. Listed explicitly so that
# anything else without a rule is reported instead of silently counted as free.
ZERO_COST_OPS = frozenset(
    """
    view _unsafe_view reshape _reshape_alias view_as expand expand_as permute transpose t
    numpy_T mT unsqueeze squeeze flatten unflatten slice select narrow as_strided alias
    detach clone contiguous copy copy_ _to_copy to _copy_from _copy_from_and_resize cat
    stack hstack vstack split split_with_sizes unsafe_split unsafe_split_with_sizes chunk
    unsafe_chunk unbind repeat tile pixel_shuffle pixel_unshuffle channel_shuffle
    native_channel_shuffle constant_pad_nd reflection_pad1d reflection_pad2d
    reflection_pad3d replication_pad1d replication_pad2d replication_pad3d _pad_circular
    roll flip index _unsafe_index index_select gather take embedding masked_select nonzero
    im2col unfold tril triu diagonal movedim empty empty_like empty_strided new_empty
    new_empty_strided zeros zeros_like new_zeros ones ones_like new_ones full full_like
    new_full fill fill_ zero_ arange linspace scalar_tensor lift_fresh lift_fresh_copy
    _local_scalar_dense item set_ resize_ detach_ is_same_size size sym_size stride
    sym_stride numel sym_numel dim storage_offset sym_storage_offset is_contiguous
    sym_is_contiguous is_strides_like_format is_non_overlapping_and_dense device layout
    native_dropout dropout bernoulli bernoulli_ rand randn rand_like randn_like randint
    normal uniform_ normal_ _assert_async _assert_tensor_metadata
    _has_compatible_shallow_copy_type record_stream
    """.split()
)


def _build_rules() -> dict[Any, Rule]:
    rules: dict[str, Rule] = {}
    for name in ("convolution", "_convolution", "convolution_overrideable"):
        rules[name] = _conv
    rules |= {
        "mm": _matmul_like(0, bias=False),
        "bmm": _matmul_like(0, bias=False),
        "matmul": _matmul_like(0, bias=False),
        "mv": _matmul_like(0, bias=False),
        "dot": _matmul_like(0, bias=False),
        "vdot": _matmul_like(0, bias=False),
        "_scaled_mm": _matmul_like(0, bias=False),
        "addmm": _matmul_like(1, bias=True),
        "baddbmm": _matmul_like(1, bias=True),
        "addmv": _matmul_like(1, bias=True),
        "_addmm_activation": _matmul_like(1, bias=True),
        "linear": _linear,
    }
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
    ):
        rules[name] = _sdpa_bhle
    rules["_flash_attention_forward"] = _sdpa_blhe
    rules["_efficient_attention_forward"] = _sdpa_blhe
    for name in ("_softmax", "_log_softmax", "_safe_softmax"):
        rules[name] = _per_input(_SOFTMAX_FLOPS)
    rules["native_batch_norm"] = _batch_norm(training_index=5)
    rules["_native_batch_norm_legit"] = _batch_norm(training_index=5)
    rules["_native_batch_norm_legit_no_training"] = _batch_norm(training_index=None)
    rules["native_group_norm"] = _norm(weight_index=1)
    rules["native_layer_norm"] = _norm(weight_index=2)
    rules["_fused_rms_norm"] = _norm(weight_index=2)
    for dims in (1, 2, 3):
        for name in (f"max_pool{dims}d", f"max_pool{dims}d_with_indices", f"avg_pool{dims}d"):
            rules[name] = _pool(dims)
    rules["mkldnn_max_pool2d"] = _pool(2)
    for name in (
        "_adaptive_avg_pool2d",
        "_adaptive_avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
    ):
        rules[name] = _per_input(1)
    for name, cost in _UPSAMPLE.items():
        rules[name] = _per_output(cost)
    for name in _ELEMENTWISE:
        rules[name] = rules[f"{name}_"] = _per_output(1)
    for name in _ELEMENTWISE_2:
        rules[name] = rules[f"{name}_"] = _per_output(2)
    for name in _REDUCTIONS:
        rules[name] = _per_input(1)

    # Key by overload packet; names this torch build lacks are skipped.
    return {getattr(aten, n): r for n, r in rules.items() if hasattr(aten, n)}


_RULES = _build_rules()
_MAC_OPS = frozenset(
    """
    convolution _convolution convolution_overrideable mm bmm matmul mv dot vdot _scaled_mm
    addmm baddbmm addmv _addmm_activation linear
    _scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_flash_attention
    _scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention
    _scaled_dot_product_fused_attention_overrideable _flash_attention_forward
    _efficient_attention_forward
    """.split()
)
_ZERO = frozenset(getattr(aten, n) for n in ZERO_COST_OPS if hasattr(aten, n)) | frozenset(
    [torch.ops.prim.device, torch.ops.prim.layout]
)


# Ops whose schema declares a fresh result but which return an alias of their input.
_NON_ALLOCATING = frozenset(
    getattr(aten, n) for n in ("_unsafe_view", "lift_fresh", "_reshape_alias") if hasattr(aten, n)
)


def op_rules() -> dict[str, str]:
    """The bucket ("macs" or "other") of every aten op with a rule (for docs and tests)."""
    return {
        str(packet): ("macs" if str(packet).split(".", 1)[1] in _MAC_OPS else "other")
        for packet in _RULES
    }


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
) -> Complexity:
    """Count parameters, MACs, other FLOPs and activation memory of one eval-mode forward.

    The model is left as it was: training flags are restored, hooks removed, nothing
    registered on it; if ``device`` differs from the model's, a copy is moved there
    (``device="meta"`` counts shapes only, without computing). ``inputs`` overrides
    ``input_shape`` for models taking several tensors.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dev = torch.device(device)
    total, unique, trainable = count_params(model)

    work = model
    if _model_device(model) != dev:
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
        work.eval()
        with torch.no_grad(), mode:
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
