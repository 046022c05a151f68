"""Models from outside segbench: installed distributions, modules and loose files.

Three ways bring a model into the registry without editing segbench:

* **entry points**: an installed distribution declares, in its ``pyproject.toml``,

  .. code-block:: toml

      [project.entry-points."segbench.models"]
      tinyseg = "byo_model.models"       # a module whose import calls @register_model

  Every registry lookup loads these first (once per process); the models' source is the
  distribution's name and version.
* ``--import MODULE`` or ``--import path/to/file.py`` on the command line (repeatable),
  or ``import:`` in a sweep file: :func:`import_models`. The module's ``@register_model``
  calls add models for that run; the source is the module name or the file's path.
* In Python: importing the module yourself (its source is then ``module <name>``).

Child processes (a sweep's cells, ``torchrun`` workers, speed's isolated workers) must
see the same models: :func:`import_models` with ``export=True`` (what the CLI does)
records the imports in the environment variable ``SEGBENCH_IMPORT`` (entries separated
by ``os.pathsep``), and every process imports them again on its first registry lookup.

A failing import is an error naming the entry point or the ``--import`` value and the
original error; it is never skipped silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

from models import registry

__all__ = [
    "ENTRY_POINT_GROUP",
    "IMPORT_ENV",
    "ModelImportError",
    "import_models",
    "load_external_models",
]

ENTRY_POINT_GROUP = "segbench.models"
IMPORT_ENV = "SEGBENCH_IMPORT"


class ModelImportError(ValueError):
    """An external model module (entry point, ``--import``) failed to import."""


_state: dict[str, object] = {"loaded": False, "error": None}
_imported: set[str] = set()  # --import values already imported in this process


@contextlib.contextmanager
def _attributed_to(source: str) -> Iterator[None]:
    """Registrations made inside the block get ``source`` as their :attr:`ModelInfo.source`."""
    registry._LOADING_SOURCE.append(source)
    try:
        yield
    finally:
        registry._LOADING_SOURCE.pop()


def _hint(err: BaseException) -> str:
    """Why a user's ``import models.x`` fails: segbench's own ``models`` package wins."""
    missing = getattr(err, "name", None) or ""
    if isinstance(err, ModuleNotFoundError) and missing.split(".")[0] in ("models", "bench"):
        top = missing.split(".")[0]
        return (
            f" (segbench's own top-level package {top!r} takes that import name in this "
            f"process, so a package of yours named {top!r} cannot be imported beside it; "
            "import your code under another package name: see README, 'Benchmark your own "
            "model')"
        )
    return ""


def _entry_points() -> list[object]:
    from importlib.metadata import entry_points

    seen: set[tuple[str, str]] = set()
    out = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key not in seen:  # a distribution on sys.path twice lists its entry points twice
            seen.add(key)
            out.append(ep)
    return out


def _load_entry_points() -> None:
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else f"entry point {ep.value}"
        with _attributed_to(source):
            try:
                ep.load()  # importing the module registers its models
            except Exception as err:
                raise ModelImportError(
                    f"entry point {ep.name} = {ep.value!r} of {source} (group "
                    f"{ENTRY_POINT_GROUP!r}) failed to import: {type(err).__name__}: {err}"
                    + _hint(err)
                ) from err


def _env_imports() -> list[str]:
    return [v for v in os.environ.get(IMPORT_ENV, "").split(os.pathsep) if v.strip()]


def load_external_models() -> None:
    """Load the entry-point models and ``SEGBENCH_IMPORT`` once per process.

    A failure is raised again on every later call, so no command runs with part of the
    registry missing.
    """
    if _state["error"] is not None:
        raise _state["error"]  # type: ignore[misc]
    if _state["loaded"]:
        return
    _state["loaded"] = True
    try:
        _load_entry_points()
        import_models(_env_imports(), where=IMPORT_ENV)
    except ModelImportError as err:
        _state["error"] = err
        raise


def is_path(spec: str) -> bool:
    """Whether an ``--import`` value is a file path (else a module name)."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def _import_file(path: Path, where: str) -> ModuleType:
    # A module name unique per file, so two files called models.py never meet in sys.modules.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    mod_name = f"segbench_import_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ModelImportError(f"{where} {path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    # As `python file.py` does: the file's folder first, so it can import its neighbours.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def _import_one(spec: str, where: str) -> str:
    """Import one ``--import`` value; returns its canonical form (absolute path or name)."""
    if is_path(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ModelImportError(f"{where} {spec}: no such file")
        canonical, source = str(path), f"file {path}"
    else:
        canonical, source = spec, f"module {spec}"
    if canonical in _imported:
        return canonical
    with _attributed_to(source):
        try:
            if is_path(spec):
                _import_file(Path(canonical), where)
            else:
                # Like `python -m`: a module beside the current directory is found.
                if "" not in sys.path and os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())
                importlib.import_module(spec)
        except ModelImportError:
            raise
        except Exception as err:
            raise ModelImportError(
                f"{where} {spec}: import failed: {type(err).__name__}: {err}" + _hint(err)
            ) from err
    _imported.add(canonical)
    return canonical


def import_models(
    specs: Iterable[str], *, where: str = "--import", export: bool = False
) -> list[str]:
    """Import modules (dotted names) or files (``*.py`` paths) whose ``@register_model``
    calls add models; returns the canonical values (absolute paths, module names).

    segbench's own models and the entry points are loaded first, so a clashing name is
    reported against them. With ``export=True`` the values are appended to
    ``SEGBENCH_IMPORT`` so child processes import them too.
    """
    specs = [s.strip() for s in specs if s and s.strip()]
    if where != IMPORT_ENV:
        registry._ensure_loaded()
    done = [_import_one(s, where) for s in specs]
    if export and done:
        known = _env_imports()
        os.environ[IMPORT_ENV] = os.pathsep.join(known + [d for d in done if d not in known])
    return done
