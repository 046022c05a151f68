"""segbench's MAC counter against analytic counts, the cross-check columns, sweep and CLI.

Expected values are the probe ops and model figures of ``docs/counting.md`` (written up from
the reference notes in ``../shared/specs/counting.md``) and the convolution / matmul
formulas written out next to each case.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.core import shapes
from bench.cost import breakdown, complexity, crosscheck, resolution
from bench.cost import golden as gold
from bench.cost.flops import ZERO_COST_OPS, analyze, count_params, op_rules


class Fn(nn.Module):
    """Wraps a function of one tensor so that a probe op runs inside a module."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _registered(name: str) -> bool:
    from models import list_models

    return name in list_models()


# --- probe ops: exact MACs ------------------------------------------------------------------

MAC_PROBES = {
    # in_ch * out_ch * k*k * H_in * W_in (docs/counting.md; thop reports 4x)
    "conv_transpose2d": (nn.ConvTranspose2d(64, 32, 2, stride=2), (1, 64, 128, 128), 134_217_728),
    # 256 * 256 * 192 (docs/counting.md)
    "q_at_kT": (Fn(lambda x: x @ x.transpose(-1, -2)), (1, 256, 192), 12_582_912),
    "einsum_qkT": (Fn(lambda x: torch.einsum("bik,bjk->bij", x, x)), (1, 256, 192), 12_582_912),
    # 2 * 6*256*256*64 (docs/counting.md; FlopCounterMode and fvcore report 0 on CPU)
    "sdpa_cpu": (
        Fn(lambda x: F.scaled_dot_product_attention(x, x, x)),
        (1, 6, 256, 64),
        50_331_648,
    ),
    # 256 * 192 * 192 on a 3-D input (docs/counting.md)
    "linear_3d": (nn.Linear(192, 192), (1, 256, 192), 9_437_184),
    # depthwise: 32 channels * 3*3 * 64*64
    "depthwise": (nn.Conv2d(32, 32, 3, padding=1, groups=32), (1, 32, 64, 64), 1_179_648),
    # grouped: 64 out * (32/4) in * 3*3 * 16*16
    "grouped": (nn.Conv2d(32, 64, 3, padding=1, groups=4), (1, 32, 16, 16), 1_179_648),
    # dilated, unpadded: output 28x28, 16 * 8 * 3*3 * 28*28
    "dilated": (nn.Conv2d(8, 16, 3, dilation=2), (1, 8, 32, 32), 903_168),
    # strided: output 32x32, 16 * 3 * 3*3 * 32*32
    "strided": (nn.Conv2d(3, 16, 3, stride=2, padding=1), (1, 3, 64, 64), 442_368),
    # Conv1d: output length 96, 8 * 4 * 5 * 96
    "conv1d": (nn.Conv1d(4, 8, 5), (1, 4, 100), 15_360),
    # Conv3d: 4 * 2 * 27 * 8^3
    "conv3d": (nn.Conv3d(2, 4, 3, padding=1), (1, 2, 8, 8, 8), 110_592),
    # grouped transposed, on the input size: 8 * 16/2 * 3*3 * 10*10
    "grouped_transpose": (nn.ConvTranspose2d(8, 16, 3, stride=2, groups=2), (1, 8, 10, 10), 57_600),
    # broadcast matmul (1,4,8,16) @ (16,32): 4*8*32 outputs, 16 each
    "matmul_broadcast": (Fn(lambda x: x @ torch.ones(16, 32)), (1, 4, 8, 16), 16_384),
    # batch 3 triples a 1x1 conv: 3 * 8 * 4 * 16
    "batch3": (nn.Conv2d(4, 8, 1, bias=False), (3, 4, 4, 4), 1_536),
}


@pytest.mark.parametrize("probe", list(MAC_PROBES))
def test_probe_macs_exact(probe: str) -> None:
    module, shape, expected = MAC_PROBES[probe]
    c = analyze(module, shape)
    assert c.macs == expected, f"{probe}: {c.macs:,} MACs, expected {expected:,}"
    assert c.unsupported_ops == {}


def test_sdpa_counted_once_on_fused_and_decomposed_paths() -> None:
    module, shape, expected = MAC_PROBES["sdpa_cpu"]
    fused = analyze(module, shape, device="cpu")
    # On the meta device aten takes the math path: two bmm, no fused kernel.
    decomposed = analyze(module, shape, device="meta")
    assert fused.macs == decomposed.macs == expected
    assert set(fused.macs_by_op) == {"aten._scaled_dot_product_flash_attention_for_cpu"}
    assert set(decomposed.macs_by_op) == {"aten.bmm"}
    assert fused.other_flops == decomposed.other_flops  # same scaling + softmax convention


@pytest.mark.parametrize(
    ("op", "layout"),
    [
        ("_scaled_dot_product_efficient_attention", "BHLE"),
        ("_scaled_dot_product_flash_attention", "BHLE"),
        ("_scaled_dot_product_cudnn_attention", "BHLE"),
        ("_flash_attention_forward", "BLHE"),
        ("_efficient_attention_forward", "BLHE"),
    ],
)
def test_gpu_attention_kernel_rules(op: str, layout: str) -> None:
    # The GPU kernels' formulas, fed shapes directly (this machine may have no GPU).
    from bench.cost.flops import _RULES

    shape = (1, 6, 256, 64) if layout == "BHLE" else (1, 256, 6, 64)
    q = torch.empty(shape, device="meta")
    rule = _RULES[getattr(torch.ops.aten, op)]
    macs, _ = rule((q, q, q), {}, q)
    assert macs == 50_331_648


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sdpa_on_gpu_counted_once() -> None:
    module, shape, expected = MAC_PROBES["sdpa_cpu"]
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(shape, device="cuda", dtype=dtype)
        c = analyze(module, inputs=(x,), device="cuda")
        assert c.macs == expected, (dtype, c.macs_by_op)


def test_torch_flop_counter_misses_cpu_attention() -> None:
    # Why segbench has its own SDPA rule (docs/counting.md): FlopCounterMode gives 0 on CPU.
    module, shape, _ = MAC_PROBES["sdpa_cpu"]
    assert crosscheck.cross_checks(module, shape, tools=("torch",))["torch"].macs == 0


def test_thop_overcounts_conv_transpose_fourfold() -> None:
    module, shape, expected = MAC_PROBES["conv_transpose2d"]
    assert crosscheck.cross_checks(module, shape, tools=("thop",))["thop"].macs == 4 * expected


# --- other FLOPs bucket ---------------------------------------------------------------------


def test_trilinear_upsample_in_other_bucket() -> None:
    # (1,2,4,4,4) x2 -> 2*8*8*8 = 1024 outputs, 8 neighbours each.
    c = analyze(Fn(lambda x: F.interpolate(x, scale_factor=2, mode="trilinear")), (1, 2, 4, 4, 4))
    assert (c.macs, c.other_flops, c.unsupported_ops) == (0, 8_192, {})
    assert c.other_flops_by_op == {"aten.upsample_trilinear3d": 8_192}


@pytest.mark.parametrize(
    ("fn", "shape", "other"),
    [
        (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), (1, 2, 8, 8), 4 * 512),
        (lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), (1, 2, 8, 8), 512),
        (lambda x: F.gelu(x) + x, (1, 4, 8, 8), 2 * 256),
        (lambda x: torch.softmax(x, -1), (2, 8, 16), 5 * 256),
        (lambda x: F.max_pool2d(x, 2), (1, 2, 8, 8), 32 * 4),
        (lambda x: F.max_pool2d(x, 2), (2, 8, 8), 32 * 4),  # unbatched input
        (lambda x: F.avg_pool3d(x, 2), (1, 1, 4, 4, 4), 8 * 8),
        (lambda x: F.group_norm(x, 2, torch.ones(4), torch.zeros(4)), (1, 4, 8, 8), 5 * 256),
    ],
    ids=[
        "bilinear",
        "nearest",
        "gelu_add",
        "softmax",
        "maxpool",
        "maxpool_unbatched",
        "avgpool3d",
        "groupnorm",
    ],
)
def test_other_flops(fn, shape: tuple[int, ...], other: int) -> None:
    c = analyze(Fn(fn), shape)
    assert (c.macs, c.other_flops, c.unsupported_ops) == (0, other, {})


def test_conv_bias_is_other_flops_not_macs() -> None:
    with_bias = analyze(nn.Conv2d(4, 8, 3, padding=1), (1, 4, 8, 8))
    without = analyze(nn.Conv2d(4, 8, 3, padding=1, bias=False), (1, 4, 8, 8))
    assert with_bias.macs == without.macs == 8 * 4 * 9 * 64
    assert (with_bias.other_flops, without.other_flops) == (8 * 64, 0)


def test_unknown_op_is_listed_with_call_count() -> None:
    c = analyze(Fn(lambda x: x.sort(-1).values + torch.topk(x, 2).values.sum()), (2, 8))
    assert c.unsupported_ops == {"aten.sort": 1, "aten.topk": 1}
    assert c.macs == 0


def test_rule_tables_are_consistent() -> None:
    rules = op_rules()
    assert rules["aten.convolution"] == "macs" and rules["aten.bmm"] == "macs"
    assert rules["aten.upsample_trilinear3d"] == "other"
    overlap = {r.split(".", 1)[1] for r in rules} & ZERO_COST_OPS
    assert not overlap, f"ops both costed and free: {overlap}"


# --- parameters and memory ------------------------------------------------------------------


def test_params_shared_storage_counted_once() -> None:
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = nn.Parameter(a.weight.data.t())  # a transposed view of a's storage
    b.weight.requires_grad_(False)
    assert count_params(nn.Sequential(a, b)) == (32, 16, 16)
    tied = nn.Linear(3, 3)
    assert count_params(nn.Sequential(tied, tied)) == (12, 12, 12)


def test_activation_bytes_cover_functional_ops() -> None:
    conv = nn.Conv2d(2, 4, 1)
    model = nn.Sequential(conv, Fn(lambda x: F.relu(x) * 2))
    c = analyze(model, (1, 2, 8, 8))
    out = 4 * 64 * 4  # float32 bytes of one (1,4,8,8) tensor
    assert c.activation_bytes == 3 * out  # conv, relu, mul allocate; no view counted
    assert c.module_output_bytes == 2 * out  # the two leaves' outputs
    assert c.per_module["0"].output_bytes == out


def test_breakdown_tree_and_depth() -> None:
    model = nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU()), nn.Conv2d(4, 1, 1))
    c = analyze(model, (1, 2, 4, 4))
    assert c.per_module[""].macs == c.macs == 16 * (2 * 4 + 4 * 1)
    assert c.per_module["0"].macs == c.per_module["0.0"].macs == 16 * 8
    assert c.per_module["0"].params == 12
    df = c.breakdown(depth=1)
    assert list(df["name"]) == ["", "0", "1"]
    assert list(breakdown.breakdown_table(c, None)["module"].str.strip()) == [
        "(model)",
        "0",
        "0",
        "1",
        "1",
    ]


# --- the caller's model and global state stay untouched -------------------------------------


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _global_hooks() -> tuple[int, ...]:
    from torch.nn.modules import module as mm

    return tuple(
        len(getattr(mm, n))
        for n in dir(mm)
        if n.startswith("_global_") and isinstance(getattr(mm, n), dict)
    )


def test_counting_leaves_model_and_globals_untouched() -> None:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    )
    model.train()
    model[1].eval()  # a mixed state that must survive
    before = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    hooks, ghooks = _hook_count(model), _global_hooks()

    first = analyze(model, (1, 3, 8, 8))
    checks = crosscheck.cross_checks(model, (1, 3, 8, 8))
    second = analyze(model, (1, 3, 8, 8))

    assert first.to_dict(per_module=True) == second.to_dict(per_module=True)
    assert all(not math.isnan(ch.macs) for ch in checks.values()), checks
    assert [m.training for m in model.modules()] == flags
    assert _hook_count(model) == hooks and _global_hooks() == ghooks
    after = model.state_dict()
    assert list(after) == list(before)  # no thop total_ops / total_params buffers
    assert all(torch.equal(after[k], before[k]) for k in before)  # BN stats not updated
    assert not any(hasattr(m, "total_ops") for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    assert _get_current_dispatch_mode_stack() == []


def test_other_device_counts_a_copy() -> None:
    model = nn.Conv2d(3, 4, 3)
    c = analyze(model, (1, 3, 16, 16), device="meta")
    assert c.macs == 4 * 3 * 9 * 14 * 14
    assert model.weight.device.type == "cpu"


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        analyze(nn.Conv2d(3, 4, 3), (1, 3, 0, 8))
    with pytest.raises(TypeError, match="nn.Module"):
        analyze(lambda x: x, (1, 3, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--input-size"):
        shapes.parse_input_size("1x3xfoo")
    with pytest.raises(ValueError, match="--input-size"):
        shapes.parse_input_size("3x256x256")  # ambiguous: CxHxW or NxHxW
    assert shapes.parse_input_size("256") == (1, 3, 256, 256)
    assert shapes.parse_input_size("256x192") == (1, 3, 256, 192)
    assert shapes.square_side((1, 3, 64, 64)) == 64
    with pytest.raises(ValueError, match="square"):
        shapes.square_side((1, 3, 64, 32))
    with pytest.raises(ValueError, match="--sweep"):
        shapes.parse_sizes("128,-1")
    assert shapes.parse_input_size("1x3x256x256") == (1, 3, 256, 256)
    assert shapes.parse_sizes("128, 256") == [128, 256]


# --- cross-check failures -------------------------------------------------------------------


def test_failing_cross_check_gives_nan_and_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model, x):
        raise RuntimeError("cannot trace this model")

    monkeypatch.setitem(crosscheck.CROSS_CHECK_TOOLS, "fvcore", broken)
    checks = crosscheck.cross_checks(nn.Conv2d(3, 4, 1), (1, 3, 4, 4))
    assert math.isnan(checks["fvcore"].macs)
    assert "fvcore failed: RuntimeError: cannot trace this model" == checks["fvcore"].reason
    assert checks["thop"].macs == checks["torch"].macs == 4 * 3 * 16


def test_real_tool_failure_is_caught() -> None:
    # fvcore traces with torch.jit, which cannot return a Python int beside a tensor.
    model = Fn(lambda x: (x * 2, 3))
    checks = crosscheck.cross_checks(model, (1, 3, 4, 4), tools=("fvcore",))
    assert math.isnan(checks["fvcore"].macs)
    assert checks["fvcore"].reason.startswith("fvcore failed: RuntimeError")


# --- registry models (docs/counting.md) -----------------------------------------------------


def test_malunet_segbench_and_thop() -> None:
    if not _registered("malunet"):
        pytest.skip("models/malunet.py does not register 'malunet' yet")
    from models import create_model

    model = create_model("malunet")
    c = analyze(model, (1, 3, 256, 256))
    thop = crosscheck.cross_checks(model, (1, 3, 256, 256), tools=("thop",))["thop"]
    assert c.macs == 82_740_224
    assert thop.macs == 82_972_800  # the paper's "0.085 GFLOPs"
    assert c.params_total == 177_943 and c.unsupported_ops == {}


def test_unet_table_exposes_thop_conv_transpose_overcount() -> None:
    if not _registered("unet"):
        pytest.skip("models/unet.py does not register 'unet' yet")
    from models import create_model

    shape = (1, 3, 64, 64)
    model = create_model("unet")
    c = analyze(model, shape, device="meta")
    thop = int(crosscheck.cross_checks(model, shape, tools=("thop",))["thop"].macs)
    transposed = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    assert transposed, "unet has no ConvTranspose2d"
    overcount = sum(c.per_module[n].macs * (m.stride[0] * m.stride[1] - 1) for n, m in transposed)
    # thop also adds 4 FLOPs per element of each affine BatchNorm (its count_normalization).
    bn = sum(
        4 * c.per_module[n].output_bytes // 4
        for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    assert thop - c.macs == overcount + bn

    import pandas as pd

    row = {
        "model": "unet",
        "macs": c.macs,
        "thop_macs": thop,
        "thop_minus_macs": thop - c.macs,
        "status": "ok",
        "reason": "",
    }
    table = complexity.display_table(pd.DataFrame([row]))
    assert table.loc[0, "thop - segbench MACs"] == f"{thop - c.macs:,}"
    assert table.loc[0, "segbench MACs"] == f"{c.macs:,}"


@pytest.mark.slow
def test_counting_md_figures_at_256() -> None:

    expected = {
        "malunet": (82_740_224, 82_972_800, 90_362_880),
        "unet": (12_071_206_912, 13_745_782_784, None),
        "smp_unet_resnet34": (7_813_988_352, 7_849_771_008, 7_835_942_912),
    }
    for name, (ours, thop, fvcore) in expected.items():
        if not _registered(name):
            continue
        row = complexity.complexity_row(name)
        assert (row["macs"], row["thop_macs"]) == (ours, thop), name
        assert row["torch_flop_counter_macs"] == ours, name
        if fvcore is not None:
            assert row["fvcore_macs"] == fvcore, name


# --- sweep, run_complexity, CLI -------------------------------------------------------------


class Needs8(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8:
            raise ValueError(f"side {x.shape[-1]} is not a multiple of 8")
        return self.conv(x)


def test_resolution_sweep_scales_and_skips() -> None:
    df = resolution.resolution_sweep(
        ["toy"], [8, 12, 16], device="meta", progress=False, builder=lambda name: Needs8()
    )
    ok = df[df["status"] == "ok"].set_index("size")
    assert ok.loc[16, "macs"] == 4 * ok.loc[8, "macs"] == 4 * 3 * 64
    skipped = df[df["status"] == "skipped"]
    assert list(skipped["size"]) == [12]
    assert "not a multiple of 8" in skipped["reason"].iloc[0]


def test_resolution_sweep_uses_registry_constraint() -> None:
    if not _registered("malunet"):
        pytest.skip("malunet not registered")
    df = resolution.resolution_sweep(["malunet"], [64, 100], device="meta", progress=False)
    assert list(df["status"]) == ["ok", "skipped"]
    assert "multiples of 32" in df["reason"].iloc[1]


def test_run_complexity_writes_files_with_provenance(tmp_path, monkeypatch) -> None:
    import models

    monkeypatch.setattr(
        models,
        "create_model",
        lambda name, in_channels=3, **kw: nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU()
        ),
    )
    monkeypatch.setattr(models, "model_info", lambda name: type("I", (), {"reported": {}})())
    df = complexity.run_complexity(
        ["a", "b"], (1, 3, 8, 8), tmp_path, cross_check=True, progress=False, command="test"
    )
    assert list(df["model"]) == ["a", "b"]
    assert (df["macs"] == 4 * 3 * 9 * 64).all() and (df["thop_macs"] == df["macs"]).all()
    data = json.loads((tmp_path / "complexity.json").read_text())
    assert data["command"] == "test" and "versions" in data["environment"]
    assert data["rows"][0]["detail"]["macs_by_op"] == {"aten.convolution": 4 * 3 * 9 * 64}
    # A later run for one model keeps the other model's row.
    complexity.run_complexity(["b"], (1, 3, 8, 8), tmp_path, cross_check=False, progress=False)
    import pandas as pd

    csv = pd.read_csv(tmp_path / "complexity.csv")
    assert list(csv["model"]) == ["a", "b"]
    assert {"torch_version", "device_name", "git_commit", "command"} <= set(csv.columns)


def test_broken_model_becomes_error_row(monkeypatch) -> None:
    import models

    def boom(name, **kw):
        raise RuntimeError("builder exploded")

    monkeypatch.setattr(models, "create_model", boom)
    monkeypatch.setattr(models, "model_info", lambda name: type("I", (), {"reported": {}})())
    row = complexity.complexity_row("bad")
    assert row["status"] == "error" and "builder exploded" in row["reason"]


def test_cli(tmp_path, capsys) -> None:
    if not _registered("malunet"):
        pytest.skip("malunet not registered")
    from bench.cli import main

    out = str(tmp_path)
    assert (
        main(
            [
                "complexity",
                "--models",
                "malunet",
                "--no-cross-check",
                "--device",
                "meta",
                "--results",
                out,
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "segbench MACs" in printed and "82,740,224" in printed
    assert (tmp_path / "complexity" / "complexity.csv").exists() and (
        tmp_path / "complexity" / "complexity.json"
    ).exists()

    assert (
        main(
            [
                "complexity",
                "--breakdown",
                "malunet",
                "--depth",
                "1",
                "--device",
                "meta",
                "--results",
                out,
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "(model)" in printed and "scab" in printed and "ebn1" in printed
    assert (tmp_path / "complexity" / "breakdown-malunet.csv").exists()

    assert (
        main(
            [
                "complexity",
                "--models",
                "malunet",
                "--sweep",
                "64,100",
                "--device",
                "meta",
                "--results",
                out,
                "--quiet",
            ]
        )
        == 0
    )
    sweep = json.loads((tmp_path / "complexity" / "sweep.json").read_text())
    assert [r["status"] for r in sweep["rows"]] == ["ok", "skipped"]

    assert (
        main(
            [
                "complexity",
                "--models",
                "malunet",
                "--update-golden",
                "--device",
                "meta",
                "--results",
                out,
                "--quiet",
            ]
        )
        == 0
    )
    golden = gold.load_golden(tmp_path / "complexity" / "golden.json")
    assert golden["malunet"]["macs"] == 82_740_224 and golden["malunet"]["gmacs"] == 0.083

    with pytest.raises(SystemExit) as exc:  # argparse: usage line plus the error
        main(["complexity", "--input-size", "1x3xfoo", "--results", out])
    assert exc.value.code == 2 and "--input-size" in capsys.readouterr().err
    assert main(["complexity", "--models", "nope*", "--results", out]) == 2
    assert main(["complexity", "--device", "tpu9", "--results", out]) == 2
    assert "--device" in capsys.readouterr().err
