"""The model contract: what segbench needs from every model, as plain check functions.

Each ``check_*`` takes a registry name and raises ``AssertionError`` with a message
naming the model and what broke. The test suite runs them on every registered model
(``tests/model_contract.py``, ``tests/test_model_contract.py``) and ``segbench
check-model`` runs them, with the harness checks of :mod:`bench.jobs.check_model`
(MAC counter, ONNX, a training smoke), on a user's model in seconds.

The contract, written down once:

* ``create_model(name, num_classes=, in_channels=)`` builds offline, as the declared
  architecture (a ``SegmentationModel``, or a plain ``nn.Module`` wrapped in
  :class:`~models.adapter.ModuleAdapter`);
* ``forward(x)`` returns finite floating-point **logits** (not probabilities)
  ``(N, num_classes, H, W)`` at the input size, for every H, W of ``input_spec``;
* a size outside ``input_spec`` or a wrong channel count raises ``InputSizeError`` /
  ``ValueError`` with segbench's message;
* ``forward_aux(x) -> (logits, [aux, ...])`` exists exactly when ``loss_weights``
  declares side outputs;
* one optimiser step moves every parameter (all take part in the loss);
* metadata fits :class:`~models.registry.ModelInfo` (no exact counts in ``notes``).

Inputs stay small (the smallest valid side of at least ``at_least``, 64 by default).
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
from collections.abc import Iterator
from unittest import mock

import torch
import torch.nn.functional as F

from models.base import InputSizeError, SegmentationModel
from models.registry import PaperFigures, create_model, model_info

__all__ = [
    "TRAIN_BATCH",
    "built",
    "check_builds_offline",
    "check_forward_shape",
    "check_input_errors",
    "check_metadata",
    "check_train_step",
    "invalid_sizes",
    "no_network",
    "param_counts",
    "contract_sizes",
]

TRAIN_BATCH = 2  # BatchNorm needs more than one value per channel in training
# Exact counts belong in results/complexity/golden.json, not in prose: 12,345 or 123456.
_EXACT_COUNT = re.compile(r"\b\d{1,3}(?:,\d{3})+\b|\b\d{5,}\b")


# --- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Any attempt to open a connection fails loudly instead of downloading or hanging."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    with (
        mock.patch.object(socket.socket, "connect", refuse),
        mock.patch.object(socket, "create_connection", refuse),
    ):
        yield


@functools.lru_cache(maxsize=2)
def _build_cached(name: str, info_id: int, num_classes: int, in_channels: int) -> SegmentationModel:
    with no_network():
        return create_model(name, num_classes=num_classes, in_channels=in_channels)


def built(name: str, num_classes: int = 1, in_channels: int = 3) -> SegmentationModel:
    """``create_model`` with the network refused; the last two builds are reused.

    The suite runs all checks of one model in a row, so the read-only checks (shapes,
    errors, counts) share one build per configuration; the train step builds its own.
    The key includes the registration, so a re-registered name is built afresh.
    """
    return _build_cached(name, id(model_info(name)), num_classes, in_channels)


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(total, unique) as the golden file defines them.

    total: ``sum(p.numel() for p in model.parameters())`` (the papers' convention).
    unique: storage elements covered by any parameter, so a Parameter that is a view of
    another's memory (MALUNet's tied IEA weights) adds nothing.
    """
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    by_storage: dict[int, list[torch.Tensor]] = {}
    for p in params:
        by_storage.setdefault(p.untyped_storage().data_ptr(), []).append(p)
    unique = 0
    for group in by_storage.values():
        if len(group) == 1:
            unique += group[0].numel()
            continue
        positions = torch.arange(group[0].untyped_storage().nbytes() // group[0].element_size())
        covered = torch.cat(
            [positions.as_strided(p.shape, p.stride(), p.storage_offset()).flatten() for p in group]
        )
        unique += int(torch.unique(covered).numel())
    return total, unique


def contract_sizes(name: str, at_least: int = 64) -> tuple[int, int]:
    """A small valid, non-square (H, W): a swapped H/W shows up in the output shape."""
    spec = model_info(name).input_spec
    h = spec.valid_side(at_least)
    return h, spec.valid_side(h + 1)


def invalid_sizes(name: str, at_least: int = 64) -> list[tuple[tuple[int, int], str]]:
    """(H, W) the model must refuse, each with the start of the expected message."""
    spec = model_info(name).input_spec
    h, w = contract_sizes(name, at_least)
    bad = []
    if spec.multiple > 1:
        bad.append(((h + 1, w), f"{name}: H and W must be multiples of {spec.multiple}, got "))
    below = (spec.min_size - 1) // spec.multiple * spec.multiple
    if below >= 1:
        bad.append(((below, w), f"{name}: H and W must be at least {spec.min_size}, got "))
    return bad


# --- the checks ---------------------------------------------------------------------------


def check_builds_offline(name: str) -> None:
    """Builds without network, as the declared architecture, also with 1 channel / 2 classes."""
    info = model_info(name)
    for kwargs in ({}, {"num_classes": 2, "in_channels": 1}):
        model = built(name, **kwargs)
        assert isinstance(model, SegmentationModel), (
            f"{name}: create_model returned {type(model).__name__}, not a SegmentationModel"
        )
        assert model.segbench_info is info, f"{name}: model.segbench_info is not its info"
        assert model.input_spec == info.input_spec, (
            f"{name}: the model's input_spec differs from the registry's"
        )


def check_forward_shape(name: str, at_least: int = 64) -> None:
    """forward gives finite logits (N, num_classes, H, W); forward_aux matches loss_weights."""
    info = model_info(name)
    h, w = contract_sizes(name, at_least)
    for n, classes, channels in ((1, 1, 3), (2, 2, 1)):
        model = built(name, num_classes=classes, in_channels=channels).eval()
        x = torch.randn(n, channels, h, w)
        with torch.no_grad():
            out = model(x)
            assert isinstance(out, torch.Tensor), f"{name}: forward returned {type(out)}"
            assert tuple(out.shape) == (n, classes, h, w), (
                f"{name}: forward gave {tuple(out.shape)} for input {tuple(x.shape)}, "
                f"expected {(n, classes, h, w)}"
            )
            assert out.is_floating_point() and torch.isfinite(out).all(), f"{name}: bad logits"
            has_aux_method = callable(getattr(model, "forward_aux", None))
            assert has_aux_method == info.has_aux, (
                f"{name}: forward_aux {'exists' if has_aux_method else 'is missing'} but "
                f"loss_weights declares {len(info.loss_weights[1])} auxiliary outputs"
            )
            if info.has_aux:
                main, aux = model.forward_aux(x)
                assert torch.allclose(main, out, atol=1e-5), (
                    f"{name}: forward_aux's main logits differ from forward's"
                )
                assert len(aux) == len(info.loss_weights[1]), (
                    f"{name}: forward_aux gave {len(aux)} side outputs, loss_weights has "
                    f"{len(info.loss_weights[1])}"
                )
                for a in aux:
                    # Side maps are at input size; EGE-UNet's have one channel whatever
                    # num_classes is, as in the authors' code.
                    assert tuple(a.shape) in {(n, classes, h, w), (n, 1, h, w)}, (
                        f"{name}: side output {tuple(a.shape)} is not at the input size"
                    )


def check_input_errors(name: str, at_least: int = 64) -> None:
    """Bad H/W raise InputSizeError in the registry's words; a bad channel count ValueError."""
    info = model_info(name)
    model = built(name).eval()
    calls = [("forward", model)]
    if info.has_aux:
        calls.append(("forward_aux", model.forward_aux))
    h, w = contract_sizes(name, at_least)
    with torch.no_grad():
        for (bh, bw), start in invalid_sizes(name, at_least):
            for what, fn in calls:
                try:
                    fn(torch.randn(1, 3, bh, bw))
                except InputSizeError as err:
                    assert str(err).startswith(start) and f"{bh}x{bw}" in str(err), (
                        f"{name}.{what}: unexpected message for {bh}x{bw}: {err}"
                    )
                except Exception as err:  # noqa: BLE001 - any other error breaks the contract
                    raise AssertionError(
                        f"{name}.{what}: {bh}x{bw} raised {type(err).__name__} ({err}) instead "
                        "of InputSizeError: call self.check_input_shape(x) first"
                    ) from err
                else:
                    raise AssertionError(
                        f"{name}.{what}: input {bh}x{bw} violates {info.input_constraint} but "
                        "raised nothing: call self.check_input_shape(x) first"
                    )
        for what, fn in calls:
            try:
                fn(torch.randn(1, 4, h, w))
            except ValueError as err:
                assert str(err).startswith(f"{name}: expected input of shape (N, 3, H, W)"), (
                    f"{name}.{what}: unexpected message for 4 channels: {err}"
                )
            except Exception as err:  # noqa: BLE001
                raise AssertionError(
                    f"{name}.{what}: 4 channels raised {type(err).__name__} ({err}) instead of "
                    "ValueError: call self.check_input_shape(x) first"
                ) from err
            else:
                raise AssertionError(f"{name}.{what}: 4 input channels raised nothing")


def check_train_step(name: str) -> None:
    """One AdamW step on BCE (plus weighted side losses) moves every parameter that got a
    gradient, and every parameter takes part in the loss."""
    info = model_info(name)
    classes = 2
    side = info.input_spec.valid_side(32)
    with no_network():
        model = create_model(name, num_classes=classes, in_channels=3).train()
    x = torch.randn(TRAIN_BATCH, 3, side, side)
    target = (torch.rand(TRAIN_BATCH, classes, side, side) > 0.5).float()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert named, f"{name}: no trainable parameters"
    before = [p.detach().clone() for _, p in named]
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-3)
    if info.has_aux:
        out, aux = model.forward_aux(x)
        loss = info.loss_weights[0] * F.binary_cross_entropy_with_logits(out, target)
        for weight, a in zip(info.loss_weights[1], aux):
            loss = loss + weight * F.binary_cross_entropy_with_logits(a, target[:, : a.shape[1]])
    else:
        loss = F.binary_cross_entropy_with_logits(model(x), target)
    assert torch.isfinite(loss), f"{name}: loss is {loss.item()}"
    opt.zero_grad()
    loss.backward()
    opt.step()
    unused = [n for n, p in named if p.grad is None]
    assert not unused, f"{name}: parameters outside the loss graph: {unused[:5]}"
    stuck = [
        n
        for (n, p), b in zip(named, before)
        if p.grad.abs().sum() > 0 and torch.equal(b, p.detach())
    ]
    assert not stuck, f"{name}: parameters with a gradient that did not change: {stuck[:5]}"


def check_metadata(name: str) -> None:
    """Registry metadata is complete and typed; reported figures fit the schema."""
    info = model_info(name)
    assert info.name == name
    assert info.full_name and info.paper and info.citation, f"{name}: incomplete metadata"
    assert info.year is not None and 1900 < info.year < 2100, f"{name}: year {info.year}"
    assert isinstance(info.reported, PaperFigures), f"{name}: reported is not PaperFigures"
    # The mapping view the harness reads round-trips through the schema.
    assert PaperFigures.from_mapping(dict(info.reported)) == info.reported
    main, aux = info.loss_weights
    assert main > 0 and all(wt > 0 for wt in aux), f"{name}: loss_weights {info.loss_weights}"
    exact = _EXACT_COUNT.findall(info.notes)
    assert not exact, (
        f"{name}: notes hold exact counts {exact}; those live in results/complexity/golden.json"
    )
