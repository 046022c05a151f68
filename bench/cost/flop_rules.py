"""The per-op rules of :mod:`bench.cost.flops`: MACs and other FLOPs of one aten call.

A rule takes an op's ``(args, kwargs, out)`` and returns ``(macs, other_flops)`` for that
call, or None when it cannot handle these arguments. :func:`op_rules` lists them; the
conventions are written up in ``docs/counting.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

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


def _flash_attention(args: tuple, kwargs: dict, out: Any) -> tuple[int, int] | None:
    # aten::_flash_attention_forward(query, key, value, cum_seq_q, cum_seq_k, ...), (B, L, H, E).
    # With cumulative sequence lengths (varlen) the batch is packed and the count needs the
    # offsets: no rule (reported as unsupported rather than guessed).
    q, k, v = args[:3]
    if q.dim() != 4 or _arg(args, kwargs, 3, "cum_seq_q") is not None:
        return None
    return _sdpa_cost(q.shape, k.shape, v.shape, seq_dim=1)


def _efficient_attention(args: tuple, kwargs: dict, out: Any) -> tuple[int, int] | None:
    # aten::_efficient_attention_forward(query, key, value, bias, cu_seqlens_q, cu_seqlens_k,
    # ...), (B, L, H, E): argument 3 is the additive attention bias (one add per score),
    # 4 the varlen offsets (no rule, as for flash).
    q, k, v = args[:3]
    if q.dim() != 4 or _arg(args, kwargs, 4, "cu_seqlens_q") is not None:
        return None
    macs, other = _sdpa_cost(q.shape, k.shape, v.shape, seq_dim=1)
    if _arg(args, kwargs, 3, "bias") is not None:
        other += _prod(q.shape[:-1]) * k.shape[1]  # B * L * H * S score additions
    return macs, other


def _mha_cost(
    q_shape: Sequence[int], s_len: int, embed: int, heads: int, mask: bool, weights: bool
) -> tuple[int, int]:
    # The fused multi-head attention of nn.MultiheadAttention's inference fast path, counted
    # as its decomposed path is: input projections (q over L, k and v over S positions),
    # scaled-dot-product attention per head (head dim E/H), output projection.
    l_len = q_shape[-2]
    batch = _prod(q_shape[:-2])
    e = embed
    macs_proj = batch * (l_len + 2 * s_len) * e * e + batch * l_len * e * e
    head_dim = e // heads
    macs_att, other_att = _sdpa_cost(
        (batch, heads, l_len, head_dim), (batch, heads, s_len, head_dim),
        (batch, heads, s_len, head_dim), seq_dim=2,
    )  # fmt: skip
    scores = batch * heads * l_len * s_len
    other = batch * (l_len + 2 * s_len) * e + batch * l_len * e  # projection biases
    other += other_att + (scores if mask else 0) + (scores if weights else 0)
    return macs_proj + macs_att, other


def _native_mha(args: tuple, kwargs: dict, out: Any) -> tuple[int, int] | None:
    # aten::_native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight,
    # qkv_bias, proj_weight, proj_bias, mask=None, need_weights=True, ...)
    q, k = args[0], args[1]
    if q.dim() < 2 or k.dim() < 2:
        return None
    embed, heads = int(args[3]), int(args[4])
    mask = _arg(args, kwargs, 9, "mask") is not None
    weights = bool(_arg(args, kwargs, 10, "need_weights", True))
    return _mha_cost(q.shape, k.shape[-2], embed, heads, mask, weights)


def _encoder_layer(args: tuple, kwargs: dict, out: Any) -> tuple[int, int] | None:
    # aten::_transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias,
    # proj_weight, proj_bias, use_gelu, norm_first, eps, norm_weight_1, norm_bias_1,
    # norm_weight_2, norm_bias_2, ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, mask):
    # TransformerEncoderLayer's whole inference fast path = self-attention + feed-forward.
    src = args[0]
    if src.dim() < 2:
        return None
    embed, heads = int(args[1]), int(args[2])
    ffn = int(args[14].shape[0])
    tokens = _prod(src.shape[:-1])
    mask = _arg(args, kwargs, 18, "mask") is not None
    macs, other = _mha_cost(src.shape, src.shape[-2], embed, heads, mask, weights=False)
    macs += 2 * tokens * embed * ffn  # linear1 (E -> F) and linear2 (F -> E)
    # FFN biases, activation, two residual adds, two affine layer norms (5 per element)
    other += tokens * (ffn + embed) + tokens * ffn + 2 * tokens * embed + 2 * 5 * tokens * embed
    return macs, other


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
    rules["_flash_attention_forward"] = _flash_attention
    rules["_efficient_attention_forward"] = _efficient_attention
    rules["_native_multi_head_attention"] = _native_mha
    rules["_transformer_encoder_layer_fwd"] = _encoder_layer
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
    _efficient_attention_forward _native_multi_head_attention _transformer_encoder_layer_fwd
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
