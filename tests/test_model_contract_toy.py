"""The contract suite runs on any registered model, and it catches broken ones.

A tiny conv net registered only for these tests gets every check of
tests/model_contract.py, with a golden entry computed by hand. Then models with one
planted defect each (wrong output size, no input check, a dead parameter, a stale golden
entry, an exact count in the notes, side outputs without loss weights) must fail the
check that covers it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import model_contract as mc
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from model_contract import ModelContract

from models import InputSpec, SegmentationModel, registry

TOY = "toy_contract_net"
_META: dict[str, Any] = {
    "full_name": "Toy contract net",
    "paper": "none (test-only)",
    "year": 2024,
    "citation": "toy2024",
    "reported": {"params_m": 0.001, "isic2017": {"dsc": 50.0}},
}


class ToyNet(SegmentationModel):
    """Two stride-2 3x3 convs, a 1x1 head, bilinear back to the input size."""

    input_spec = InputSpec(multiple=4, min_size=8)

    def __init__(self, num_classes: int = 1, in_channels: int = 3) -> None:
        super().__init__(in_channels)
        self.down = nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.mid(F.relu(self.down(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        return F.interpolate(self.features(x), size=x.shape[-2:], mode="bilinear")


# By hand, 3 channels in, 1 class, at 1x3x256x256: down 3*8*9 + 8 = 224 params,
# 216 MACs per output pixel at 128x128; mid 8*8*9 + 8 = 584, 576 MACs at 64x64;
# head 8 + 1 = 9, 8 MACs at 64x64.
TOY_GOLDEN = {
    TOY: {
        "params_total": 224 + 584 + 9,
        "params_unique": 224 + 584 + 9,
        "macs": 216 * 128 * 128 + 576 * 64 * 64 + 8 * 64 * 64,
        "gmacs": 0.006,
    }
}


@contextlib.contextmanager
def registered(name: str, model_cls: type[SegmentationModel], **meta: Any) -> Iterator[None]:
    """Register ``model_cls`` as ``name`` for the duration of the block only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
        registry.register_model(name, **{**_META, **meta})(model_cls)
        yield


class TestToyModelContract(ModelContract):
    """The whole contract suite, on a model that exists only in this test."""

    model_names = [TOY]

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _register_toy(cls) -> Iterator[None]:
        with registered(TOY, ToyNet):
            yield

    @pytest.fixture
    def golden(self) -> dict[str, dict[str, Any]]:
        return TOY_GOLDEN


def test_toy_is_gone_after_its_tests() -> None:
    assert TOY not in registry.list_models()


# --- planted defects: each must fail the check that covers it ---------------------------------


class WrongShape(ToyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        return self.features(x)  # forgot to up-sample: logits at 1/4 size


class NoInputCheck(ToyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No check_input_shape: a bad size runs through and silently yields an output.
        return F.interpolate(self.features(x), size=x.shape[-2:], mode="bilinear")


class DeadParameter(ToyNet):
    def __init__(self, num_classes: int = 1, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels)
        self.unused = nn.Conv2d(8, 8, 1)  # built, never called


class AuxWithoutWeights(ToyNet):
    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self(x)
        return out, [out]


def test_wrong_output_shape_is_caught() -> None:
    with (
        registered("toy_wrong_shape", WrongShape),
        pytest.raises(AssertionError, match=r"toy_wrong_shape: forward gave \(1, 1, 16, 17\)"),
    ):
        mc.check_forward_shape("toy_wrong_shape")


def test_missing_input_check_is_caught() -> None:
    with (
        registered("toy_no_check", NoInputCheck),
        pytest.raises(AssertionError, match=r"toy_no_check.forward: input 65x68 .* raised nothing"),
    ):
        mc.check_input_errors("toy_no_check")


def test_dead_parameter_is_caught() -> None:
    with (
        registered("toy_dead", DeadParameter),
        pytest.raises(AssertionError, match=r"outside the loss graph: \['unused.weight'"),
    ):
        mc.check_train_step("toy_dead")


def test_stale_or_missing_golden_entry_is_caught() -> None:
    stale = {TOY: {**TOY_GOLDEN[TOY], "params_total": 816}}
    with registered(TOY, ToyNet):
        with pytest.raises(AssertionError, match=r"golden params .* = \(816, 817\).*\(817, 817\)"):
            mc.check_golden(TOY, stale)
        with pytest.raises(AssertionError, match="no entry in golden.json.*--update-golden"):
            mc.check_golden(TOY, {})
        with pytest.raises(AssertionError, match="golden macs is None"):
            mc.check_golden(TOY, {TOY: {**TOY_GOLDEN[TOY], "macs": None}})


def test_exact_count_in_notes_is_caught() -> None:
    with (
        registered("toy_notes", ToyNet, notes="Built as in the paper: 817 params, 5,931,008 MACs."),
        pytest.raises(AssertionError, match=r"notes hold exact counts \['5,931,008'\]"),
    ):
        mc.check_metadata("toy_notes")


def test_side_outputs_without_loss_weights_are_caught() -> None:
    with (
        registered("toy_aux", AuxWithoutWeights),
        pytest.raises(AssertionError, match="forward_aux exists but loss_weights declares 0"),
    ):
        mc.check_forward_shape("toy_aux")


def test_param_counts_see_shared_storage() -> None:
    model = ToyNet()
    total, unique = mc.param_counts(model)
    assert total == unique == TOY_GOLDEN[TOY]["params_total"]
    # Tie the head's weight to a slice of mid's storage: counted by numel, not by storage.
    model.head.weight.data = model.mid.weight.data.view(-1)[:8].view(1, 8, 1, 1)
    assert mc.param_counts(model) == (total, total - 8)
