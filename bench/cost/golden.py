"""The golden file ``results/complexity/golden.json``: exact parameter and MAC counts of every registry model, the regression guard checked by ``tests/test_golden.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from bench.core.env import command_line
from bench.core.shapes import DEFAULT_SHAPE, shape_label
from bench.cost.complexity import COLUMNS, _progress, _provenance
from bench.cost.flops import Complexity, analyze

ROOT = Path(__file__).resolve().parents[2]


GOLDEN_PATH = ROOT / "results" / "complexity" / "golden.json"


GOLDEN_SHAPE = DEFAULT_SHAPE


GOLDEN_FIELDS = ("params_total", "params_unique", "macs")


UPDATE_HINT = (
    "regenerate results/complexity/golden.json with `segbench complexity --update-golden` "
    "(or `nox -s update-golden`) and commit it"
)


def golden_entry(c: Complexity) -> dict[str, Any]:
    """The golden record of one count: exact ints plus a rounded GMACs field for humans."""
    return {
        "params_total": c.params_total,
        "params_unique": c.params_unique,
        "macs": c.macs,
        "gmacs": round(c.macs / 1e9, 3),
    }


def load_golden(path: str | Path = GOLDEN_PATH) -> dict[str, dict[str, Any]]:
    """Model -> golden entry; a clear error when the file is missing or malformed."""
    from bench.core.io import read_json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"golden file {path} does not exist: {UPDATE_HINT}")
    try:
        data = read_json(path)
    except ValueError as err:
        raise ValueError(f"golden file {path} is not valid JSON ({err}): {UPDATE_HINT}") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"golden file {path} has no 'models' mapping: {UPDATE_HINT}")
    return models


def _count_for_golden(model: nn.Module, device: str) -> dict[str, Any]:
    return golden_entry(analyze(model, GOLDEN_SHAPE, device=device))


def compare_golden(
    golden: dict[str, dict[str, Any] | None], current: dict[str, dict[str, Any] | str]
) -> list[dict[str, Any]]:
    """Differences between golden entries and current counts, one dict per (model, field).

    ``current`` maps a model to its entry, or to an error message when counting failed.
    A model without a golden entry is a difference too (with how to add it).
    """
    drifts = []
    for name, now in current.items():
        ref = golden.get(name)
        if isinstance(now, str):
            drifts.append(
                {
                    "model": name,
                    "field": "(count failed)",
                    "golden": None,
                    "now": None,
                    "change %": None,
                    "note": now,
                }
            )
        elif ref is None:
            drifts.append(
                {
                    "model": name,
                    "field": "(no golden entry)",
                    "golden": None,
                    "now": now.get("macs"),
                    "change %": None,
                    "note": f"no golden entry for this model: add it with `segbench complexity "
                    f"--update-golden --models {name}` (or `nox -s update-golden`) and commit "
                    "results/complexity/golden.json",
                }
            )
        else:
            for fld in GOLDEN_FIELDS:
                g, n = ref.get(fld), now[fld]
                if g != n:
                    pct = (100.0 * (n - g) / g) if isinstance(g, int) and g else None
                    drifts.append(
                        {
                            "model": name,
                            "field": fld,
                            "golden": g,
                            "now": n,
                            "change %": pct,
                            "note": "",
                        }
                    )
    return drifts


def format_drift(drifts: list[dict[str, Any]]) -> str:
    """A readable table of differences plus how to accept them."""
    if not drifts:
        return "golden counts match"
    lines = [f"{'model':<28} {'field':<18} {'golden':>16} {'now':>16} {'change %':>9}"]
    for d in drifts:
        g = "-" if d["golden"] is None else f"{d['golden']:,}"
        n = "-" if d["now"] is None else f"{d['now']:,}"
        pct = "-" if d["change %"] is None else f"{d['change %']:+.3f}"
        lines.append(f"{d['model']:<28} {d['field']:<18} {g:>16} {n:>16} {pct:>9}")
        if d.get("note"):
            lines.append(f"    {d['note']}")
    lines.append(f"If the change is intended, {UPDATE_HINT}.")
    return "\n".join(lines)


def check_golden(
    names: Sequence[str], golden: dict[str, dict[str, Any]], device: str = "meta"
) -> list[dict[str, Any]]:
    """Recount ``names`` and compare with ``golden``.

    Counting on the meta device takes shapes only (seconds for the whole registry); a model
    that fails or differs there is recounted on CPU, the path the golden file records, so a
    meta-only artefact never reads as a model change.
    """
    from models import create_model

    current: dict[str, dict[str, Any] | str] = {}
    for name in names:
        try:
            model = create_model(name)
        except Exception as err:  # noqa: BLE001
            current[name] = f"create_model failed: {type(err).__name__}: {err}"
            continue
        try:
            now: dict[str, Any] | str = _count_for_golden(model, device)
        except Exception as err:  # noqa: BLE001
            now = f"{type(err).__name__}: {err}"
        ref = golden.get(name)
        if (
            device != "cpu"
            and ref is not None
            and (isinstance(now, str) or any(now[f] != ref.get(f) for f in GOLDEN_FIELDS))
        ):
            try:
                now = _count_for_golden(model, "cpu")
            except Exception as err:  # noqa: BLE001
                now = f"{type(err).__name__}: {err}"
        current[name] = now
    return compare_golden(golden, current)


def update_golden(
    names: Sequence[str],
    path: str | Path = GOLDEN_PATH,
    device: str = "cpu",
    command: str | None = None,
    prune: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Recount ``names`` at 1x3x256x256 and write them into the golden file.

    Entries of other models are kept, unless ``prune`` (a full regeneration) drops those no
    longer in the registry.
    """
    from bench.core.io import write_json
    from models import create_model, list_models

    path = Path(path)
    try:
        entries = load_golden(path)
    except (FileNotFoundError, ValueError):
        entries = {}
    if prune:
        registered = set(list_models())
        entries = {k: v for k, v in entries.items() if k in registered}
    for name in _progress(list(names), "golden", progress):
        try:
            entries[name] = _count_for_golden(create_model(name), device)
        except Exception as err:
            # Nothing is written: a golden file with a hole would hide the broken model.
            raise RuntimeError(
                f"{name}: cannot count it ({type(err).__name__}: {err}); "
                f"golden file {path} left unchanged"
            ) from err
    command = command or command_line()
    write_json(
        path,
        {
            "about": "Exact parameter and MAC counts of every registry model at "
            f"{shape_label(GOLDEN_SHAPE)}, checked by tests/test_golden.py. After a "
            f"deliberate model change, {UPDATE_HINT}.",
            "input_shape": shape_label(GOLDEN_SHAPE),
            "fields": {
                "params_total": COLUMNS["params_total"],
                "params_unique": COLUMNS["params_unique"],
                "macs": COLUMNS["macs"],
                "gmacs": COLUMNS["gmacs"],
            },
            "command": command,
            "environment": _provenance(device, command),
            "models": dict(sorted(entries.items())),
        },
    )
    return entries
