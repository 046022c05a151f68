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


def _options(parser, path=()):
    """(subcommand path, option action) for every option of every (sub)parser."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_version_and_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import __version__

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"segbench {__version__}"
    assert cli.main([]) == 2  # no command: the help, and a failing exit code
    err = capsys.readouterr().err
    assert "usage: segbench" in err and "COMMAND" in err


def test_every_option_has_help_text() -> None:
    missing = [
        f"segbench {' '.join(path)} {'/'.join(a.option_strings) or a.dest}"
        for path, a in _options(cli.build_parser())
        if not (a.help and a.help.strip())
    ]
    assert missing == []


def test_one_flag_per_concept_across_subcommands() -> None:
    flags: dict[str, set[str]] = {}
    for path, a in _options(cli.build_parser()):
        if path:
            flags.setdefault(path[0], set()).update(a.option_strings)
    for command in ("complexity", "speed", "train", "evaluate"):
        assert "--input-size" in flags[command], command
        assert not {"--input", "--size"} & flags[command], command
    for command in ("complexity", "speed", "train", "evaluate", "report", "benchmark", "sweep"):
        assert "--results" in flags[command], command
        assert "--out" not in flags[command], command
    assert not any("--out" in f for f in flags.values())


@pytest.mark.parametrize(
    "text, side, shape",
    [("256", 256, (1, 3, 256, 256)), ("64x64", 64, (1, 3, 64, 64)), ("1x3x32x32", 32, None)],
)
def test_input_size_spellings(text: str, side: int, shape) -> None:
    from bench.cli.common import input_shape, input_side

    assert input_side(text) == side
    assert input_shape(text) == (shape or (1, 3, side, side))


def test_unknown_set_key_suggests_the_close_one(tmp_path, capsys) -> None:
    rc = cli.main(["train", "--model", "malunet", "--data", str(tmp_path), "--set", "lr_rate=1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "lr_rate" in err and "did you mean: lr" in err
    assert (
        cli.main(["train", "--model", "malunet", "--data", str(tmp_path), "--set", "epoch=1"]) == 2
    )
    assert "did you mean: epochs" in capsys.readouterr().err


def test_verbose_diagnostics_on_stderr_results_on_stdout(capsys) -> None:
    assert cli.main(["-v", "models", "malunet"]) == 0
    captured = capsys.readouterr()
    assert "malunet" in captured.out and "segbench 0" not in captured.out
    assert "segbench 0" in captured.err  # the debug line with the parsed arguments
    assert cli.main(["models", "malunet"]) == 0
    assert capsys.readouterr().err == ""  # no debug line without -v


def test_progress_bars_only_on_a_terminal(monkeypatch, capsys) -> None:
    from bench.core.progress import progress_bar, show_progress

    monkeypatch.delenv("SEGBENCH_PROGRESS", raising=False)
    assert not show_progress(True)  # pytest's stderr is not a terminal
    for _ in progress_bar(range(3), enabled=True, desc="x"):
        pass
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("SEGBENCH_PROGRESS", "1")
    assert show_progress(True) and not show_progress(False)
    for _ in progress_bar(range(3), enabled=True, desc="forced"):
        pass
    assert "forced" in capsys.readouterr().err
