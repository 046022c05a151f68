"""The `segbench` entry point: help, the registry table, errors."""

from __future__ import annotations

import pytest

from bench import cli
from models import list_models


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ["models", *cli.COMMANDS]:
        assert name in out


def test_each_subcommand_parses_help_alone(capsys: pytest.CaptureFixture[str]) -> None:
    # Only the chosen subcommand's module is imported; its --help must still work.
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0, name
        assert f"segbench {name}" in capsys.readouterr().out


def test_models_table_lists_all_with_params(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "177,943" in out  # MALUNet, sum of numel (the paper's convention)
    assert "53,374" in out  # EGE-UNet


def test_models_pattern_without_match_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "nosuchmodel*"]) == 2
    assert "nosuchmodel*" in capsys.readouterr().err


def test_bad_input_is_one_line_naming_it(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEGBENCH_DEBUG", raising=False)
    missing = tmp_path / "no-such-dataset"
    assert cli.main(["data", "info", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert err.startswith("segbench data: error:")
