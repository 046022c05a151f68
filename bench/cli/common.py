"""Argument helpers shared by the subcommands: one flag name and one parser per concept.

* ``--input-size``: ``256``, ``256x256`` or ``1x3x256x256`` (:func:`add_input_size`);
* ``--results``: the results folder a command writes into (:func:`add_results`);
* ``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (checked by
  :func:`bench.core.device.resolve_device` when the command runs);
* ``--import MODULE|FILE.py`` (repeatable): models from the user's own code
  (:func:`add_import`; :func:`bench.cli.main` imports them before the command runs);
* comma-separated lists, positive integers and fixed choices as argparse types.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from bench.core.shapes import parse_input_size, square_side

RESULTS_DIR = "results"


def _argtype(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn a ValueError of ``fn`` into argparse's one-line usage error."""

    def parse(text: str) -> Any:
        try:
            return fn(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = getattr(fn, "__name__", "value")
    return parse


def input_shape(text: str) -> tuple[int, int, int, int]:
    """``--input-size`` as N x C x H x W."""
    return parse_input_size(text)


def input_side(text: str) -> int:
    """``--input-size`` of a command that takes square inputs: the side length."""
    return square_side(parse_input_size(text))


def add_input_size(
    p: argparse.ArgumentParser, default: str | None = "256", *, shape: bool = False, help: str = ""
) -> None:
    """Add ``--input-size`` (``256``, ``256x256`` or ``1x3x256x256``)."""
    what = "input size N x C x H x W" if shape else "square input side"
    # a string default goes through ``type`` too, and shows as typed in --help
    p.add_argument(
        "--input-size",
        type=_argtype(input_shape if shape else input_side),
        default=default,
        metavar="SIZE",
        help=f"{what}: 256, 256x256 or 1x3x256x256"
        + (f"; {help}" if help else "")
        + (" (default: %(default)s)" if default is not None else ""),
    )


def add_results(
    p: argparse.ArgumentParser, default: str | None = RESULTS_DIR, help: str = ""
) -> None:
    """Add ``--results`` (the folder a command writes into)."""
    text = help or "results folder"
    if default is not None:
        text += " (default: %(default)s)"
    p.add_argument("--results", default=default, metavar="DIR", help=text)


def positive_int(text: str) -> int:
    """A positive integer (argparse type)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not a positive integer")
    return v


def csv_list(kind: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    """A comma-separated list of ``kind`` values (argparse type)."""

    def parse(text: str) -> list[Any]:
        items = [p.strip() for p in text.split(",") if p.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{what}: give a comma-separated list, got {text!r}")
        try:
            return [kind(p) for p in items]
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise argparse.ArgumentTypeError(f"{what}: {err}") from None

    return parse


def choice(options: Sequence[str]) -> Callable[[str], str]:
    """One of ``options`` (argparse type, usable inside :func:`csv_list`)."""

    def check(text: str) -> str:
        if text not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return text

    return check


def add_import(p: argparse.ArgumentParser) -> None:
    """Add ``--import`` (repeatable): modules or ``*.py`` files whose ``@register_model``
    calls add models for this run. :func:`bench.cli.main` imports them (see
    :func:`run_imports`) before the command runs, so every name lookup sees them."""
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE|FILE.py",
        help="import a module or a path/to/file.py whose @register_model calls add models "
        "(repeatable; child processes import it too)",
    )


def run_imports(args: argparse.Namespace) -> list[str]:
    """Import the ``--import`` values of a parsed command line (none: nothing happens).

    They are exported to ``SEGBENCH_IMPORT``, so the command's child processes (sweep
    cells, torchrun workers, speed's isolated workers) register the same models.
    """
    imports = getattr(args, "imports", None)
    if not imports:
        return []
    from models import import_models

    return import_models(imports, export=True)
