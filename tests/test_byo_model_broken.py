"""check-model names each planted defect of an external model and exits non-zero.

Three plain nn.Modules in a loose file (imported as a user would, with --import): one
returns logits at half the input size, one returns probabilities (a final sigmoid), one
uses an op the MAC counter has no rule for (erfinv). Each must fail exactly the check
that covers it, as a check that training or counting depends on.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import cli
from bench.jobs.check_model import exit_code, run_checks
from models import external as ext
from models import import_models, registry

BROKEN = """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from models import InputSpec, register_model

    SPEC = InputSpec(multiple=2, min_size=4)


    class Base(nn.Module):
        def __init__(self, num_classes=1, in_channels=3):
            super().__init__()
            self.down = nn.Conv2d(in_channels, 4, 3, stride=2, padding=1)
            self.head = nn.Conv2d(4, num_classes, 1)

        def forward(self, x):
            y = self.head(F.relu(self.down(x)))
            return F.interpolate(y, size=x.shape[-2:], mode="bilinear")


    @register_model("broken_size", input_spec=SPEC)
    class WrongSize(Base):
        def forward(self, x):
            return self.head(F.relu(self.down(x)))  # forgot to up-sample


    @register_model("broken_probs", input_spec=SPEC)
    class Probabilities(Base):
        def forward(self, x):
            return torch.sigmoid(super().forward(x))


    @register_model("broken_uncounted", input_spec=SPEC)
    class Uncounted(Base):
        def forward(self, x):
            return torch.erfinv(torch.tanh(super().forward(x)) * 0.9)
"""


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(ext, "_imported", set(ext._imported))
    monkeypatch.setenv(ext.IMPORT_ENV, "")
    path = tmp_path / "broken_models.py"
    path.write_text(textwrap.dedent(BROKEN))
    import_models([str(path)])
    yield path


def _failed(name: str) -> dict[str, str]:
    results = run_checks(name, at_least=16, onnx=False)
    assert exit_code(results) == 1, f"{name}: exit code 0 although broken"
    # the critical failures; metadata (no paper given here) only warns
    return {r.name: r.detail for r in results if r.passed is False and r.critical}


def test_wrong_output_size_is_named(broken: Path) -> None:
    failed = _failed("broken_size")
    # the training smoke cannot compare logits and masks of different sizes either
    assert list(failed) == [
        "output shape and dtype at the input size",
        "training smoke: 2 steps on synthetic data",
    ]
    assert "broken_size: forward gave (1, 1, 8, 9) for input (1, 3, 16, 18)" in next(
        iter(failed.values())
    )


def test_probabilities_are_named(broken: Path) -> None:
    failed = _failed("broken_probs")
    assert list(failed) == ["logits, not probabilities (range check)"]
    assert (
        "probabilities (sigmoid?), not logits" in failed["logits, not probabilities (range check)"]
    )


def test_an_uncounted_op_is_named(broken: Path) -> None:
    failed = _failed("broken_uncounted")
    assert list(failed) == ["every op counted by the MAC counter"]
    assert (
        "ops without a counting rule: aten.erfinv:1"
        in failed["every op counted by the MAC counter"]
    )


def test_check_model_command_exits_non_zero_on_a_wrong_output_size(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["check-model", "broken_size", "--input-size", "16", "--no-onnx"]
    assert cli.main(argv) == 1
    out = capsys.readouterr()
    assert "FAIL  output shape and dtype at the input size" in out.out
    assert "fix: forward returns float logits (N, num_classes, H, W) at the input size" in out.out
    assert "a check that training or counting depends on failed" in out.err
