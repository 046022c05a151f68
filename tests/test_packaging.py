"""Packaging: the wheel ships `bench` and `models` only, with the YAML files at their places."""

from __future__ import annotations

from pathlib import Path

import pytest
from setuptools import find_namespace_packages

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_only_bench_and_models_are_packaged() -> None:
    include = _config()["packages"]["find"]["include"]
    # setuptools finds namespace packages too (how benchmarks/ used to slip in)
    packages = find_namespace_packages(where=str(ROOT), include=include)
    assert {p.split(".")[0] for p in packages} == {"bench", "models"}
    # every folder of bench/ with Python modules is a package (none left out of the wheel)
    folders = {
        ".".join(d.relative_to(ROOT).parts)
        for d in (ROOT / "bench").rglob("*")
        if d.is_dir() and any(d.glob("*.py"))
    }
    assert folders <= set(packages)


def test_package_data_covers_every_yaml_file() -> None:
    data = _config()["package-data"]
    shipped = {
        p.resolve()
        for pkg, globs in data.items()
        for g in globs
        for p in (ROOT / pkg.replace(".", "/")).glob(g)
    }
    yamls = {p.resolve() for p in (ROOT / "bench").rglob("*.yaml")}
    assert yamls and yamls == shipped


def test_developing_md_module_table_covers_every_module() -> None:
    text = (ROOT / "DEVELOPING.md").read_text()
    missing = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "bench").rglob("*.py"))
        if p.name not in ("__init__.py", "__main__.py")
        and p.parent.name != "cli"  # one row: bench/cli/<command>.py
        and f"`{p.relative_to(ROOT)}`" not in text
    ]
    assert missing == []
