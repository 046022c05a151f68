"""Registry behaviour: names, wildcards, metadata and its schema, registration errors.

The per-model contract (build, shapes, input errors, train step, golden) is in
tests/test_model_contract.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import (
    InputSizeError,
    InputSpec,
    ModelInfo,
    PaperFigures,
    PaperScores,
    SegmentationModel,
    UnknownModelError,
    check_input_size,
    create_model,
    list_models,
    model_info,
    registry,
)


class _Tiny(SegmentationModel):
    input_spec = InputSpec(multiple=8, min_size=8)

    def __init__(self, num_classes: int = 1, in_channels: int = 3) -> None:
        super().__init__(in_channels)
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        return self.conv(x)


_META = {"full_name": "Tiny", "paper": "none", "year": 2024, "citation": "t"}


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations in the test are dropped afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_registry_lists_the_comparison_models() -> None:
    expected = {
        "malunet",
        "egeunet",
        "unet",
        "attention_unet",
        "transfuse_s",
        "smp_unet_resnet34",
        "smp_unet_mobilenet_v2",
        "smp_unet_efficientnet_b0",
        "smp_segformer_mit_b0",
        "lraspp_mobilenet_v3_large",
    }
    assert expected <= set(list_models())


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
    assert mal.input_spec == InputSpec(multiple=32, min_size=32)
    assert mal.input_multiple == 32 and mal.min_input == 32  # what bench reads
    assert mal.input_constraint == "H and W multiples of 32, at least 32"
    assert mal.reported["params_m"] == 0.177 and mal.reported["gflops"] == 0.085
    assert mal.reported["isic2017"]["dsc"] == 88.13 and mal.reported["isic2018"]["miou"] == 80.25
    assert mal.reported.isic2017 is not None and mal.reported.isic2017.sen == 84.78
    assert not mal.has_aux
    ege = model_info("egeunet")
    assert ege.year == 2023 and ege.has_aux
    assert ege.reported["gflops"] == 0.072 and ege.reported["isic2018"]["dsc"] == 89.46
    assert model_info("unet").input_spec == InputSpec(multiple=16, min_size=16)
    assert model_info("lraspp_mobilenet_v3_large").input_spec == InputSpec(1, 16)


def test_create_model_passes_kwargs_and_attaches_info() -> None:
    model = create_model("malunet", num_classes=2, in_channels=1, c_list=[4, 8, 12, 16, 24, 32])
    assert model.segbench_info is model_info("malunet")
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(TypeError):
        create_model("egeunet", no_such_option=True)


def test_register_model_rejects_duplicates_and_registers(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_model("malunet", full_name="x", paper="x", year=2000, citation="x")(
            lambda **kw: nn.Identity()
        )

    registry.register_model("tiny_test_net", **_META)(_Tiny)  # a class is its own builder

    @registry.register_model("tiny_test_fn", architecture=_Tiny, **_META)
    def tiny_test_fn(num_classes: int = 1, in_channels: int = 3) -> _Tiny:
        return _Tiny(num_classes, in_channels)

    assert list_models("tiny*") == ["tiny_test_fn", "tiny_test_net"]
    model = create_model("tiny_test_net", num_classes=4)
    assert model.conv.out_channels == 4 and model.contract_name == "tiny_test_net"
    assert model_info("tiny_test_net").loss_weights == (1.0, ())
    assert model_info("tiny_test_fn").input_spec is _Tiny.input_spec  # read from the class
    with pytest.raises(InputSizeError, match=r"^tiny_test_fn: H and W must be multiples of 8"):
        create_model("tiny_test_fn")(torch.rand(1, 3, 12, 16))


def test_registration_needs_a_segmentation_model_with_an_input_spec(
    scratch_registry: None,
) -> None:
    with pytest.raises(TypeError, match="architecture="):
        registry.register_model("bad_plain", **_META)(lambda **kw: nn.Conv2d(3, 1, 1))

    class NoSpec(SegmentationModel):
        pass

    with pytest.raises(TypeError, match="NoSpec declares no input_spec"):
        registry.register_model("bad_nospec", **_META)(NoSpec)
    # The constraint is declared once, on the class: the registry refuses a second copy.
    for legacy in ({"input_multiple": 16}, {"min_input": 16}):
        with pytest.raises(TypeError, match="declared once"):
            registry.register_model("bad_legacy", **legacy, **_META)(_Tiny)
    assert not list_models("bad_*")  # nothing half-registered


def test_builder_returning_another_class_fails_at_build(scratch_registry: None) -> None:
    class Other(_Tiny):
        input_spec = InputSpec(multiple=32, min_size=32)

    @registry.register_model("liar", architecture=Other, **_META)
    def liar(num_classes: int = 1, in_channels: int = 3) -> SegmentationModel:
        return _Tiny(num_classes, in_channels)

    with pytest.raises(TypeError, match="liar.*returned _Tiny, not the registered architecture"):
        create_model("liar")


def test_check_input_shape_names_rank_channels_and_size() -> None:
    model = _Tiny(in_channels=2)
    with pytest.raises(ValueError, match=r"_Tiny: expected input of shape \(N, 2, H, W\)"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"got \(2, 8, 8\)"):
        model(torch.rand(2, 8, 8))
    with pytest.raises(InputSizeError, match=r"at least 8, got 0x8"):
        model(torch.rand(1, 2, 0, 8))
    assert model(torch.rand(1, 2, 8, 24)).shape == (1, 1, 8, 24)
    with pytest.raises(ValueError, match="in_channels"):
        _Tiny(in_channels=0)


def test_input_spec() -> None:
    spec = InputSpec(multiple=16, min_size=48)
    assert spec.valid_side(1) == 48 and spec.valid_side(50) == 64 and spec.valid_side(64) == 64
    assert InputSpec(1, 16).valid_side(3) == 16
    spec.check(48, 64)
    with pytest.raises(InputSizeError, match=r"nearest valid: 48x64\)"):
        spec.check(20, 70, model="m")  # the nearest multiple of 16 (16) is below the minimum
    for bad in ({"multiple": 0}, {"min_size": -1}, {"multiple": 2.0}, {"multiple": True}):
        with pytest.raises(ValueError, match="InputSpec"):
            InputSpec(**bad)


# --- reported figures: a schema, so a typo fails at registration -----------------------------


def test_misspelt_reported_key_fails_at_registration(scratch_registry: None) -> None:
    good = {"params_m": 1.0, "isic2017": {"dsc": 88.0}}
    registry.register_model("ok_net", reported=good, **_META)(_Tiny)
    assert model_info("ok_net").reported == PaperFigures(
        params_m=1.0, isic2017=PaperScores(dsc=88.0)
    )
    cases = [
        ({"dsc_isic2071": 88.0}, r"unknown key 'dsc_isic2071'"),
        ({"isic2071": {"dsc": 88.0}}, r"unknown key 'isic2071' \(did you mean 'isic201[78]'\?\)"),
        ({"isic2017": {"dcs": 88.0}}, r"reported\['isic2017'\]: unknown key 'dcs'.*'dsc'"),
        ({"param_m": 1.0}, r"did you mean 'params_m'"),
        ({"isic2017": {"dsc": 0.88}}, r"percentage.*0\.88 \(a fraction\?\)"),
        ({"isic2017": {"dsc": "88"}}, r"finite number"),
        ({"isic2017": {}}, r"at least one score"),
        ({"gflops": -1}, r"gflops must be positive"),
        ({"isic2018": 88.0}, r"mapping of scores"),
    ]
    for i, (reported, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            registry.register_model(f"bad_{i}", reported=reported, **_META)(_Tiny)
    assert not list_models("bad_*")
    with pytest.raises(TypeError):
        PaperFigures(isic2071=PaperScores(dsc=88.0))  # type: ignore[call-arg]


def test_paper_figures_read_as_the_legacy_mapping() -> None:
    fig = PaperFigures(params_m=0.177, isic2018=PaperScores(miou=80.25, dsc=89.04))
    # What bench reads: .get, [], .items() with plain dicts per dataset, truthiness.
    assert list(fig) == ["params_m", "isic2018"] and len(fig) == 2
    assert fig.get("gflops", "n/a") == "n/a" and "gflops" not in fig
    assert dict(fig.items()) == {"params_m": 0.177, "isic2018": {"dsc": 89.04, "miou": 80.25}}
    assert isinstance(fig["isic2018"], dict)
    assert not PaperFigures() and fig
    assert PaperFigures.from_mapping(dict(fig)) == fig
    assert set(PaperFigures.dataset_names()) == {"isic2017", "isic2018", "ph2"}
    info = ModelInfo(
        name="n", reported={"gflops": 2}, input_spec=InputSpec(), **_META
    )  # a mapping is validated into PaperFigures
    assert isinstance(info.reported, PaperFigures) and info.reported.gflops == 2.0


def test_check_input_size_messages() -> None:
    with pytest.raises(
        InputSizeError,
        match=r"^malunet: H and W must be multiples of 32, got 250x250 \(nearest valid: 256x256\)$",
    ):
        check_input_size(250, 250, 32, model="malunet")
    with pytest.raises(InputSizeError, match="at least 64"):
        check_input_size(32, 32, 32, min_size=64)
    check_input_size(256, 512, 32)
