"""UNet, Attention U-Net, TransFuse-S and the library baselines: counts, shapes, weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import InputSizeError, create_model, model_info


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unet_params_formula(base: int, classes: int, in_ch: int = 3) -> int:
    """Closed-form U-Net count: double conv 9io + 9o^2 + 6o (two biased convs + two BNs),
    2x2 ConvTranspose 4io + o, 1x1 head."""
    w = [base * 2**i for i in range(5)]

    def dc(i: int, o: int) -> int:
        return 9 * i * o + 9 * o * o + 6 * o

    enc = dc(in_ch, w[0]) + sum(dc(w[i], w[i + 1]) for i in range(4))
    dec = sum(4 * w[i + 1] * w[i] + w[i] + dc(2 * w[i], w[i]) for i in range(4))
    return enc + dec + w[0] * classes + classes


# ----------------------------------------------------------------------------- UNet


def test_unet_param_count_exact() -> None:
    assert n_params(create_model("unet")) == 7_765_985
    assert unet_params_formula(32, 1) == 7_765_985  # the formula below agrees with the spec


@pytest.mark.parametrize("base,classes,in_ch", [(64, 1, 3), (16, 3, 1)])
def test_unet_width_is_configurable(base: int, classes: int, in_ch: int) -> None:
    model = create_model("unet", num_classes=classes, in_channels=in_ch, base_width=base)
    assert n_params(model) == unet_params_formula(base, classes, in_ch)


def test_unet_uses_conv_transpose() -> None:
    model = create_model("unet")
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules()) == 4


# -------------------------------------------------------------------- Attention U-Net


@pytest.mark.parametrize("base,expected", [(32, 8_726_077), (64, 34_878_573)])
def test_attention_unet_param_count_exact(base: int, expected: int) -> None:
    assert n_params(create_model("attention_unet", base_width=base)) == expected


def test_attention_gate_scales_the_skip() -> None:
    from models.attention_unet import AttentionGate

    gate = AttentionGate(8, 8, 4).eval()
    g, x = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        out = gate(g, x)
    ratio = out / x  # one sigmoid coefficient per pixel, shared by every channel
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_bad_width_is_rejected() -> None:
    with pytest.raises(ValueError, match="base_width"):
        create_model("attention_unet", base_width=1)
    with pytest.raises(ValueError, match="base_width"):
        create_model("unet", base_width=0)


# ------------------------------------------------------------------------ TransFuse-S


@pytest.fixture(scope="module")
def transfuse_256() -> torch.nn.Module:
    return create_model("transfuse_s")


def test_transfuse_param_count_at_256(transfuse_256: torch.nn.Module) -> None:
    assert n_params(transfuse_256) == pytest.approx(26.27e6, rel=0.01)
    # Components: ResNet-34 without layer4 / fc and an 8-block DeiT-small.
    assert n_params(transfuse_256.resnet) == 8_170_304
    assert len(transfuse_256.transformer.blocks) == 8
    assert transfuse_256.transformer.pos_embed.shape == (1, 16 * 16, 384)


def test_transfuse_at_192x256() -> None:
    model = create_model("transfuse_s", img_size=(192, 256)).eval()
    assert n_params(model) == pytest.approx(26_248_725, rel=0.01)
    assert model.transformer.pos_embed.shape == (1, 12 * 16, 384)
    with torch.no_grad():
        main, aux = model.forward_aux(torch.randn(1, 3, 192, 256))
    assert main.shape == (1, 1, 192, 256)
    assert [a.shape for a in aux] == [(1, 1, 192, 256)] * 2


def test_transfuse_heads_and_loss_weights(transfuse_256: torch.nn.Module) -> None:
    info = model_info("transfuse_s")
    assert info.has_aux and info.loss_weights == (0.5, (0.3, 0.2))
    model = transfuse_256.eval()
    x = torch.randn(1, 3, 64, 96)  # another grid than built for: pos_embed is resampled
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model, head).register_forward_hook(
            lambda _m, _i, out, head=head: seen.__setitem__(head, out)
        )
        for head in ("head4", "head_t4", "head16")
    ]
    try:
        with torch.no_grad():
            main, (t4, f16) = model.forward_aux(x)
            assert torch.equal(model(x), main)
    finally:
        for h in hooks:
            h.remove()
    assert main.shape == t4.shape == f16.shape == (1, 1, 64, 96)
    # Order documented in models/transfuse.py: main = fused 1/4, aux = transformer 1/4, fused 1/16.
    for head, out, scale in (("head4", main, 4), ("head_t4", t4, 4), ("head16", f16, 16)):
        assert seen[head].shape[-2:] == (64 // scale, 96 // scale)
        up = torch.nn.functional.interpolate(seen[head], size=(64, 96), mode="bilinear")
        assert torch.allclose(out, up, atol=1e-6), head


def test_transfuse_rejects_bad_sizes(transfuse_256: torch.nn.Module) -> None:
    with torch.no_grad(), pytest.raises(InputSizeError, match="multiples of 16"):
        transfuse_256.eval()(torch.randn(1, 3, 72, 64))
    with pytest.raises(ValueError, match="img_size"):
        create_model("transfuse_s", img_size=100)


# -------------------------------------------------------------------- TransFuse weights


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_transfuse_loads_whole_model(tmp_path: Path, transfuse_256: torch.nn.Module) -> None:
    path = tmp_path / "transfuse.pt"
    torch.save({"state_dict": transfuse_256.state_dict()}, path)
    loaded = create_model("transfuse_s", weights_path=path)
    assert _params_equal(loaded, transfuse_256)


def test_transfuse_loads_resnet_and_deit_parts(
    tmp_path: Path, transfuse_256: torch.nn.Module
) -> None:
    import timm
    import torchvision

    from models.transfuse import load_transfuse_weights

    resnet = torchvision.models.resnet34(weights=None)
    deit = timm.create_model("deit_small_patch16_224", pretrained=False)  # 12 blocks, 14x14
    torch.save(resnet.state_dict(), tmp_path / "resnet34.pth")
    torch.save({"model": deit.state_dict()}, tmp_path / "deit_s.pth")

    model = create_model(
        "transfuse_s",
        img_size=(192, 256),
        weights_path=[tmp_path / "resnet34.pth", tmp_path / "deit_s.pth"],
    )
    assert torch.equal(model.resnet.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    assert torch.equal(model.resnet.conv1.weight, resnet.conv1.weight)
    assert torch.equal(model.transformer.blocks[7].mlp.fc2.weight, deit.blocks[7].mlp.fc2.weight)
    assert torch.equal(model.transformer.patch_embed.proj.weight, deit.patch_embed.proj.weight)
    # 14x14 ImageNet positions (plus the class token's) resampled to the 12x16 grid.
    from timm.layers import resample_abs_pos_embed

    expected = resample_abs_pos_embed(
        deit.pos_embed[:, 1:], [12, 16], [14, 14], num_prefix_tokens=0
    )
    assert model.transformer.pos_embed.shape == (1, 192, 384)
    assert torch.allclose(model.transformer.pos_embed, expected)

    # A whole-model checkpoint of a 12x16 grid cannot be resampled to 16x16 blindly.
    torch.save(model.state_dict(), tmp_path / "tf_192x256.pt")
    with pytest.raises(ValueError, match="img_size"):
        load_transfuse_weights(transfuse_256, tmp_path / "tf_192x256.pt")


def test_transfuse_weight_errors(tmp_path: Path, transfuse_256: torch.nn.Module) -> None:
    import torchvision

    from models.transfuse import load_transfuse_weights

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_model("transfuse_s", weights_path=tmp_path / "missing.pt")

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        create_model("transfuse_s", weights_path=junk)

    other = tmp_path / "unet.pt"
    torch.save(create_model("unet", base_width=2).state_dict(), other)
    with pytest.raises(ValueError, match="neither"):
        load_transfuse_weights(transfuse_256, other)

    # A grey-scale ResNet stem does not fit an RGB model; nothing is loaded.
    sd = torchvision.models.resnet34(weights=None).state_dict()
    sd["conv1.weight"] = sd["conv1.weight"][:, :1]
    torch.save(sd, tmp_path / "resnet_gray.pth")
    before = transfuse_256.resnet.layer1[0].conv1.weight.clone()
    with pytest.raises(ValueError, match="shape mismatch.*conv1.weight"):
        load_transfuse_weights(transfuse_256, tmp_path / "resnet_gray.pth")
    assert torch.equal(before, transfuse_256.resnet.layer1[0].conv1.weight)

    whole = {f"resnet.{k}": v for k, v in transfuse_256.resnet.state_dict().items()}
    whole["transformer.extra"] = torch.zeros(1)
    torch.save(whole, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="lacks"):
        load_transfuse_weights(transfuse_256, tmp_path / "partial.pt")


# ---------------------------------------------------------------------- library baselines


@pytest.mark.parametrize(
    "name,expected",
    [
        ("smp_unet_resnet34", 24_436_369),
        ("smp_unet_mobilenet_v2", 6_628_945),
        ("smp_unet_efficientnet_b0", 5_839_309),
        ("smp_segformer_mit_b0", 3_714_401),
        ("lraspp_mobilenet_v3_large", 3_218_138),
    ],
)
def test_baseline_param_counts(name: str, expected: int) -> None:
    # Matches the library's own count (spec: 24.44 / 6.63 / 6.25 / 3.71 / 3.22 M), except
    # efficientnet-b0, whose unused classifier conv head is dropped (see models/baselines.py).
    assert n_params(create_model(name)) == expected


def test_efficientnet_unused_head_can_be_kept() -> None:
    assert n_params(create_model("smp_unet_efficientnet_b0", keep_unused_head=True)) == 6_251_469


def test_lraspp_takes_any_size_and_unwraps_the_dict() -> None:
    model = create_model("lraspp_mobilenet_v3_large", num_classes=3, in_channels=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 50, 70))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 50, 70)


def test_smp_models_reject_sizes_smp_cannot_take() -> None:
    model = create_model("smp_segformer_mit_b0").eval()
    with (
        torch.no_grad(),
        pytest.raises(InputSizeError, match="smp_segformer_mit_b0.*multiples of 32"),
    ):
        model(torch.randn(1, 3, 48, 64))
