"""Every registered model builds offline, declares its input constraints and trains a step."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F

from models import InputSizeError, create_model, list_models, model_info

ALL_MODELS = list_models()
N, CLASSES = 2, 2  # batch 2: BatchNorm needs more than one value per channel in training


def _size(name: str) -> int:
    """A small valid side length: 32, or the model's minimum if that is larger."""
    info = model_info(name)
    side = max(32, info.min_input)
    return -(-side // info.input_multiple) * info.input_multiple


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails loudly instead of downloading or hanging."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_registry_lists_the_comparison_models() -> None:
    expected = {
        "unet",
        "attention_unet",
        "transfuse_s",
        "smp_unet_resnet34",
        "smp_unet_mobilenet_v2",
        "smp_unet_efficientnet_b0",
        "smp_segformer_mit_b0",
        "lraspp_mobilenet_v3_large",
    }
    assert expected <= set(ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_metadata_is_complete(name: str) -> None:
    info = model_info(name)
    assert info.name == name
    assert info.full_name and info.paper and info.citation
    assert 1900 < info.year < 2100
    assert info.input_multiple >= 1 and info.min_input >= 1
    main, aux = info.loss_weights
    assert main > 0 and all(w > 0 for w in aux)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_builds_offline_and_trains_one_step(name: str, no_network: None) -> None:
    model = create_model(name, num_classes=CLASSES, in_channels=3)
    info = model_info(name)
    side = _size(name)
    x = torch.randn(N, 3, side, side)
    target = (torch.rand(N, CLASSES, side, side) > 0.5).float()

    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    if info.has_aux:
        out, aux = model.forward_aux(x)
        assert len(aux) == len(info.loss_weights[1])
        loss = info.loss_weights[0] * F.binary_cross_entropy_with_logits(out, target)
        for w, a in zip(info.loss_weights[1], aux):
            # Side outputs are at input size; some (EGE-UNet's) have one channel whatever
            # num_classes is, as in the authors' code.
            assert a.shape in {(N, CLASSES, side, side), (N, 1, side, side)}
            loss = loss + w * F.binary_cross_entropy_with_logits(a, target[:, : a.shape[1]])
    else:
        out = model(x)
        loss = F.binary_cross_entropy_with_logits(out, target)
    assert out.shape == (N, CLASSES, side, side)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()

    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"{name}: parameters outside the loss graph: {unused[:5]}"
    moved = [not torch.equal(b, p.detach()) for b, p in zip(before, params)]
    assert any(moved), f"{name}: no parameter changed after an AdamW step"
    for (pname, p), m in zip(
        ((n, p) for n, p in model.named_parameters() if p.requires_grad), moved
    ):
        if p.grad is not None and p.grad.abs().sum() > 0:
            assert m, f"{name}: {pname} has a gradient but did not change"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_other_channels_and_bad_input_size(name: str) -> None:
    info = model_info(name)
    model = create_model(name, num_classes=1, in_channels=1).eval()
    side = _size(name)
    with torch.no_grad():
        assert model(torch.randn(1, 1, side, side)).shape == (1, 1, side, side)
        if info.input_multiple > 1:
            bad = (side + 1, side)
        elif info.min_input > 1:
            bad = (info.min_input - 1, side)
        else:
            return  # accepts every size
        with pytest.raises(InputSizeError, match=r"\d+x\d+"):
            model(torch.randn(1, 1, *bad))
