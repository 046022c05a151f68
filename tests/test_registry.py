"""Registry behaviour: names, wildcards, metadata, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import (
    InputSizeError,
    UnknownModelError,
    check_input_size,
    create_model,
    list_models,
    model_info,
    registry,
)


def test_list_models_wildcards_and_comma_lists() -> None:
    everything = list_models()
    assert everything == sorted(everything)
    assert {"malunet", "egeunet"} <= set(everything)
    assert list_models("mal*") == ["malunet"]
    assert {"malunet", "egeunet"} <= set(list_models("*unet"))
    assert list_models("malunet, egeunet") == ["egeunet", "malunet"]
    assert list_models(["egeunet", "mal?net"]) == ["egeunet", "malunet"]
    assert list_models("no-such-*") == []
    assert list_models("") == everything


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(UnknownModelError) as err:
        create_model("malunte")
    msg = str(err.value)
    assert "Did you mean: malunet" in msg
    assert msg.startswith("unknown model 'malunte'")  # not KeyError's quoted repr
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownModelError, match="egeunet"):
        model_info("ege-unet")


def test_model_info_fields() -> None:
    mal = model_info("malunet")
    assert mal.name == "malunet"
    assert mal.year == 2022 and "MALUNet" in mal.paper and mal.citation
    assert mal.input_multiple == 32
    assert mal.input_constraint == "H and W multiples of 32, at least 32"
    assert mal.reported["params_m"] == 0.177 and mal.reported["gflops"] == 0.085
    assert mal.reported["isic2017"]["dsc"] == 88.13 and mal.reported["isic2018"]["miou"] == 80.25
    assert not mal.has_aux
    ege = model_info("egeunet")
    assert ege.year == 2023 and ege.has_aux
    assert ege.reported["gflops"] == 0.072 and ege.reported["isic2018"]["dsc"] == 89.46


def test_create_model_passes_kwargs_and_attaches_info() -> None:
    model = create_model("malunet", num_classes=2, in_channels=1, c_list=[4, 8, 12, 16, 24, 32])
    assert model.segbench_info is model_info("malunet")
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(TypeError):
        create_model("egeunet", no_such_option=True)


def test_register_model_rejects_duplicates_and_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_model("malunet", full_name="x", paper="x", year=2000, citation="x")(
            lambda **kw: nn.Identity()
        )

    @registry.register_model(
        "tiny_test_net", full_name="Tiny", paper="none", year=2024, citation="t"
    )
    def tiny_test_net(num_classes: int = 1, in_channels: int = 3) -> nn.Module:
        return nn.Conv2d(in_channels, num_classes, 1)

    assert "tiny_test_net" in list_models("tiny*")
    assert create_model("tiny_test_net", num_classes=4).out_channels == 4
    assert model_info("tiny_test_net").loss_weights == (1.0, ())


def test_check_input_size_messages() -> None:
    with pytest.raises(InputSizeError, match=r"H and W must be multiples of 32, got 250x250"):
        check_input_size(250, 250, 32, model="malunet")
    with pytest.raises(InputSizeError, match="at least 64"):
        check_input_size(32, 32, 32, min_size=64)
    check_input_size(256, 512, 32)
