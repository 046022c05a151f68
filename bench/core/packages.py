"""Keep segbench's top-level ``models`` package from being shadowed by a user's own.

segbench installs two top-level import names, ``bench`` and ``models``. Research
repositories very often have a ``models/`` package of their own, and a notebook or a
``python -m`` started in such a repository has it first on ``sys.path``, so a plain
``import models`` inside segbench would load the user's package and the registry would
silently be someone else's. :func:`pin_models_package` puts a finder first on
``sys.meta_path`` that answers the name ``models`` (and, through the package's
``__path__``, its submodules) with segbench's own folder, beside this ``bench`` package.

The price, until the installed import names are made unique (see the README section
"Benchmark your own model"): in that process the user's own ``models`` package cannot be
imported under that name. A ``models`` that is already imported and is not segbench's is
an error, never used.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["ModelsShadowedError", "pin_models_package", "segbench_root"]


class ModelsShadowedError(ImportError):
    """Another package named ``models`` was imported before segbench's."""


def segbench_root() -> Path:
    """The folder holding segbench's ``bench`` and ``models`` packages."""
    return Path(__file__).resolve().parents[2]


class _SegbenchModelsFinder(importlib.abc.MetaPathFinder):
    """Finds the top-level ``models`` in segbench's folder only (submodules follow)."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "models":
            return None
        return importlib.machinery.PathFinder.find_spec("models", [self.root])


def pin_models_package() -> None:
    """Make ``import models`` load segbench's package in this process (idempotent).

    Raises :class:`ModelsShadowedError` when a different ``models`` is already imported.
    """
    root = segbench_root()
    ours = root / "models" / "__init__.py"
    loaded = sys.modules.get("models")
    if loaded is not None:
        where = getattr(loaded, "__file__", None)
        if where is None or Path(where).resolve() != ours:
            raise ModelsShadowedError(
                f"the module 'models' imported in this process is {where or loaded!r}, not "
                f"segbench's {ours}: a package of yours named 'models' was imported first and "
                "shadows segbench's; import segbench (bench.api) before it, or rename yours"
            )
    if not any(isinstance(f, _SegbenchModelsFinder) for f in sys.meta_path):
        if ours.is_file():
            sys.meta_path.insert(0, _SegbenchModelsFinder(root))
