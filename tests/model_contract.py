"""The contract every registered model meets: the checks of ``models.contract`` plus a test class.

A new architecture gets the whole suite by registering (``@register_model``): the
registry-wide subclass in ``tests/test_model_contract.py`` is parametrised over
``list_models()``. Each ``check_*`` function takes a registry name and raises
``AssertionError`` with a message naming the model and what broke, so a test can also
run it against a model registered only for that test (see
``tests/test_model_contract_toy.py``), in the style of smp's ``BaseModelTester``.

The checks themselves are in ``models/contract.py`` (``segbench check-model`` runs them on
a user's model); the golden-file check and the test class stay here. Inputs stay small
(the model's smallest valid side of at least 32 or 64), so the whole registry runs in the
default suite.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

GOLDEN_PATH = Path(__file__).resolve().parents[1] / "results" / "complexity" / "golden.json"
GOLDEN_FIELDS = ("params_total", "params_unique", "macs")


# --- the checks live in the package (segbench check-model runs them too) --------------------

from models.contract import (  # noqa: E402
    built,
    check_builds_offline,
    check_forward_shape,
    check_input_errors,
    check_metadata,
    check_train_step,
    param_counts,
)


def load_golden(path: Path = GOLDEN_PATH) -> dict[str, dict[str, Any]]:
    """The ``models`` mapping of the golden file, read directly (no bench import)."""
    return json.loads(path.read_text())["models"]


def check_golden(name: str, golden: Mapping[str, Mapping[str, Any]]) -> None:
    """The golden file has params and MACs for the model; the params equal a fresh count.

    MACs are counted by bench (tests/test_golden.py compares them); here only their presence.
    """
    entry = golden.get(name)
    assert entry is not None, (
        f"{name}: no entry in {GOLDEN_PATH.name}; add it with `segbench complexity "
        f"--update-golden --models {name}` and commit results/complexity/golden.json"
    )
    for key in GOLDEN_FIELDS:
        assert isinstance(entry.get(key), int) and entry[key] > 0, (
            f"{name}: golden {key} is {entry.get(key)!r}, expected a positive int"
        )
    total, unique = param_counts(built(name))
    assert (entry["params_total"], entry["params_unique"]) == (total, unique), (
        f"{name}: golden params (total, unique) = "
        f"({entry['params_total']:,}, {entry['params_unique']:,}), the model has "
        f"({total:,}, {unique:,})"
    )


# --- the suite as a test class -------------------------------------------------------------


class ModelContract:
    """Base test class: a ``Test...`` subclass sets ``model_names`` and gets every check.

    Override the ``golden`` fixture to check against another golden mapping.
    """

    model_names: ClassVar[Sequence[str]] = ()

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "name" in metafunc.fixturenames:
            # Class scope groups the tests by model, so the read-only checks share builds.
            metafunc.parametrize("name", list(self.model_names), scope="class")

    @pytest.fixture
    def golden(self) -> dict[str, dict[str, Any]]:
        return load_golden()

    def test_builds_offline(self, name: str) -> None:
        check_builds_offline(name)

    def test_forward_shape(self, name: str) -> None:
        check_forward_shape(name)

    def test_input_errors(self, name: str) -> None:
        check_input_errors(name)

    def test_train_step(self, name: str) -> None:
        check_train_step(name)

    def test_golden_counts(self, name: str, golden: dict[str, dict[str, Any]]) -> None:
        check_golden(name, golden)

    def test_metadata(self, name: str) -> None:
        check_metadata(name)
