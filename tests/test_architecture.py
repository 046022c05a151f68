"""Structural rules of the code base, read from the source with :mod:`ast` (nothing imported).

What DEVELOPING.md states about the layout, checked (issue 27, "Acceptance"):

* no import circle in ``bench/`` (module-level and function-level imports, relative
  imports resolved): a circle means neither module can be read, tested or moved alone;
* no module in ``bench/`` or ``models/`` over :data:`MAX_LINES` lines;
* no ``_private`` name used across packages: a name imported (``from x import _y``) or
  reached through an imported module (``steps._tf32``) from another package. A package is
  ``bench.<folder>`` (``bench.analysis.report`` is part of ``bench.analysis``: one layer);
  ``models`` is one package, ``bench/__init__.py`` and ``bench/api.py`` are ``bench``;
* the layers: ``core -> data -> deploy -> cost / speed / engine -> analysis -> jobs -> cli``
  (a module imports only its own folder and the folders before it; ``bench/api.py`` sits
  beside ``cli``), ``deploy`` imports only ``core`` and ``models``, and ``models`` never
  imports ``bench``.

Each checker takes a source root, so the ``*_is_reported`` tests run it on a small package
written into ``tmp_path`` with the fault in it and see the fault named: the checks can fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: DEVELOPING.md's "no module over 600 lines"
MAX_LINES = 600

#: DEVELOPING.md "Data flow": the folders of ``bench/`` in order; one rank may hold several
#: folders (``cost`` / ``speed`` / ``engine``), which may import one another
LAYERS: dict[str, int] = {
    "core": 0,
    "data": 1,
    "deploy": 2,
    "cost": 3,
    "speed": 3,
    "engine": 3,
    "analysis": 4,
    "jobs": 5,
    "cli": 6,
    "api": 6,  # bench/api.py: the Python twin of the CLI
}

#: what ``deploy`` may import besides itself (DEVELOPING.md: "imports only core and models")
DEPLOY_IMPORTS = {"bench.core", "bench.deploy", "models"}


# --------------------------------------------------------------------------- the reader


@dataclass(frozen=True)
class Import:
    """One import statement's target in the source tree."""

    importer: str  # dotted module name
    target: str  # dotted module name of a module in the tree
    names: tuple[str, ...]  # names taken from it (``from target import a, b``); () for a module
    line: int


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted name -> file of every module under ``root/<package>`` (``__init__`` as its
    package)."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def _resolve_from(importer: str, node: ast.ImportFrom, files: dict[str, Path]) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer, files):
        base = base[:-1]  # a module's level 1 is its package
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _known(name: str, files: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is a module of the tree; None outside it."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in files:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(name: str, files: dict[str, Path]) -> Iterator[Import]:
    """Every import in module ``name``, at any depth (functions, ``if`` blocks, ``try``)."""
    tree = ast.parse(files[name].read_text(), filename=str(files[name]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, files)
                if target:
                    yield Import(name, target, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(name, node, files)
            plain = []
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in files:  # ``from pkg import module``
                    yield Import(name, sub, (), node.lineno)
                else:
                    plain.append(alias.name)
            target = _known(source, files)
            if plain and target:
                yield Import(name, target, tuple(plain), node.lineno)


def import_graph(root: Path, packages: Iterable[str] = ("bench",)) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports (itself left out)."""
    files = module_files(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for m in files:
        for imp in imports_of(m, files):
            if imp.target != m:
                graph[m].add(imp.target)
    return graph


# --------------------------------------------------------------------------- the checks


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module, as a path
    ``[a, b, ..., a]`` (the shortest circle through its first module).

    Tarjan's algorithm, iterative (no recursion limit on a deep tree); hand-written
    because the test must not depend on a graph library the project does not use.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    components.append(sorted(comp))
    return [_shortest_cycle(graph, comp) for comp in sorted(components)]


def _shortest_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """The shortest path from ``comp[0]`` back to itself inside the component (BFS)."""
    inside, start = set(comp), comp[0]
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & inside):
            if nxt == start:  # back at the start: walk the parents from ``node``
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return [*comp, comp[0]]  # not reached: a component of > 1 module has a circle


def long_modules(
    root: Path, packages: Iterable[str] = ("bench", "models"), limit: int = MAX_LINES
) -> list[str]:
    """``"<path>: N lines"`` for every module over ``limit`` lines."""
    out = []
    for path in module_files(root, packages).values():
        n = len(path.read_text().splitlines())
        if n > limit:
            out.append(f"{path.relative_to(root)}: {n} lines")
    return sorted(out)


def package_of(module: str) -> str:
    """``bench.<folder>`` (``bench.analysis.report`` -> ``bench.analysis``), ``bench`` for
    ``bench/__init__.py`` and ``bench/api.py``, else the top-level name (``models``)."""
    parts = module.split(".")
    if parts[0] == "bench" and len(parts) > 1 and parts[1] != "api":
        return ".".join(parts[:2])
    return parts[0]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(root: Path, packages: Iterable[str] = ("bench",)) -> list[str]:
    """``"<importer>:<line> <target>.<name>"`` for every ``_private`` name of another
    package that a module imports (``from target import _name``, or a private module) or
    reaches through a module it imported (``module._name``)."""
    files = module_files(root, packages)
    out = []
    for m in sorted(files):
        foreign: dict[str, str] = {}  # local name bound to a module of another package
        for imp in imports_of(m, files):
            if package_of(imp.target) == package_of(m):
                continue
            out += [f"{m}:{imp.line} {imp.target}.{n}" for n in imp.names if _private(n)]
            if any(_private(p) for p in imp.target.split(".")):
                out.append(f"{m}:{imp.line} {imp.target}")
        tree = ast.parse(files[m].read_text())
        for node in ast.walk(tree):  # names bound to foreign modules, then their attributes
            if isinstance(node, ast.ImportFrom):
                source = _resolve_from(m, node, files)
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in files and package_of(sub) != package_of(m):
                        foreign[alias.asname or alias.name] = sub
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in files:
                        if package_of(alias.name) != package_of(m):
                            foreign[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in foreign
                and _private(node.attr)
            ):
                out.append(f"{m}:{node.lineno} {foreign[node.value.id]}.{node.attr}")
    return sorted(set(out))


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "bench" or len(parts) < 2:
        return None
    return parts[1]


def layer_violations(root: Path) -> list[str]:
    """``"<importer>:<line> imports <target> (<why>)"`` for every import against the
    layering of DEVELOPING.md (see the module docstring)."""
    files = module_files(root, ("bench", "models"))
    out = []
    for m in sorted(files):
        for imp in imports_of(m, files):
            src, dst = _layer(m), _layer(imp.target)
            where = f"{m}:{imp.line} imports {imp.target}"
            if m.split(".")[0] == "models" and imp.target.split(".")[0] == "bench":
                out.append(f"{where} (models never imports bench)")
            elif src == "deploy" and package_of(imp.target) not in DEPLOY_IMPORTS:
                out.append(f"{where} (deploy imports only core and models)")
            elif src in LAYERS and dst in LAYERS and LAYERS[dst] > LAYERS[src]:
                out.append(f"{where} ({dst} is a later layer than {src})")
    return out


# --------------------------------------------------------------------------- the rules


def test_no_import_circles_in_bench() -> None:
    cycles = [" -> ".join(c) for c in find_cycles(import_graph(ROOT))]
    assert cycles == [], "import circles:\n" + "\n".join(cycles)


def test_no_module_over_the_line_limit() -> None:
    found = long_modules(ROOT)
    assert found == [], f"modules over {MAX_LINES} lines:\n" + "\n".join(found)


def test_no_private_names_across_packages() -> None:
    found = private_imports(ROOT)
    assert found == [], "_private names used across packages:\n" + "\n".join(found)


def test_imports_follow_the_layers() -> None:
    found = layer_violations(ROOT)
    assert found == [], "imports against the layers:\n" + "\n".join(found)


def test_every_bench_folder_has_a_layer() -> None:
    folders = {p.name for p in (ROOT / "bench").iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert folders <= set(LAYERS), f"add the new folder to LAYERS: {folders - set(LAYERS)}"


# --------------------------------------------------------------------------- the checks can fail


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_circle_is_reported_with_its_path(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "bench/__init__.py": "",
            "bench/speed/__init__.py": "",
            # module level, absolute
            "bench/speed/a.py": "from bench.speed.b import f\n",
            # function level, relative, ``from package import module``
            "bench/speed/b.py": "def f():\n    from . import c\n",
            "bench/speed/c.py": "def g():\n    from .a import f\n",
            "bench/speed/d.py": "import bench.speed.a\n",  # on no circle
            "bench/cost/__init__.py": "",
            "bench/cost/x.py": "from ..cost import y\n",
            "bench/cost/y.py": "import bench.cost.x as x\n",
        },
    )
    assert find_cycles(import_graph(root)) == [
        ["bench.cost.x", "bench.cost.y", "bench.cost.x"],
        ["bench.speed.a", "bench.speed.b", "bench.speed.c", "bench.speed.a"],
    ]
    (root / "bench/speed/c.py").write_text("def g():\n    pass\n")
    (root / "bench/cost/y.py").write_text("")
    assert find_cycles(import_graph(root)) == []


def test_a_long_module_is_reported(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "bench/__init__.py": "",
            "bench/core/ok.py": "x = 1\n" * MAX_LINES,
            "models/big.py": "x = 1\n" * (MAX_LINES + 1),
        },
    )
    assert long_modules(root) == [f"models/big.py: {MAX_LINES + 1} lines"]


def test_a_private_name_across_packages_is_reported(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "bench/__init__.py": "",
            "bench/speed/__init__.py": "",
            "bench/speed/steps.py": "def _tf32(): ...\ndef _inner(): ...\n",
            "bench/speed/run.py": "from bench.speed.steps import _inner\n",  # same package
            "bench/jobs/__init__.py": "",
            "bench/jobs/check.py": "from bench.speed.steps import _tf32, public\n",
            "bench/jobs/other.py": "def f():\n    from ..speed import steps\n    steps._tf32()\n",
            "bench/analysis/__init__.py": "",
            "bench/analysis/runs.py": "def _rows(): ...\n",
            "bench/analysis/report/__init__.py": "",
            "bench/analysis/report/write.py": "from bench.analysis.runs import _rows\n",
        },
    )
    assert private_imports(root) == [
        "bench.jobs.check:1 bench.speed.steps._tf32",
        "bench.jobs.other:3 bench.speed.steps._tf32",
    ]


def test_an_import_against_the_layers_is_reported(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "bench/__init__.py": "",
            "bench/core/__init__.py": "",
            "bench/core/io.py": "def f():\n    from bench.data import splits\n",
            "bench/data/__init__.py": "",
            "bench/data/splits.py": "from bench.core.io import f\n",  # allowed: earlier layer
            "bench/deploy/__init__.py": "",
            "bench/deploy/export.py": "from bench.data.splits import x\nimport models\n",
            "bench/speed/__init__.py": "",
            "bench/speed/run.py": "from bench.cost import peak\n",  # allowed: same rank
            "bench/cost/__init__.py": "",
            "bench/cost/peak.py": "",
            "models/__init__.py": "",
            "models/unet.py": "from bench.core import io\n",
        },
    )
    assert layer_violations(root) == [
        "bench.core.io:2 imports bench.data.splits (data is a later layer than core)",
        "bench.deploy.export:1 imports bench.data.splits (deploy imports only core and models)",
        "models.unet:1 imports bench.core.io (models never imports bench)",
    ]
