"""Model names: the one expander of names and wildcard patterns into registry names.

``segbench complexity|speed|benchmark --models`` and a sweep file's ``models:`` all go
through :func:`expand_models`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["expand_models"]


def expand_models(
    spec: str | Sequence[Any] | None,
    where: str = "--models",
    *,
    info: Callable[[str], Any] | None = None,
) -> list[str]:
    """Registry names for comma-separated (or listed) names and wildcard patterns.

    ``None`` or ``""`` means every registered model. Order follows ``spec``, repeats
    dropped. An exact name that is not registered raises ``UnknownModelError`` (a
    ``KeyError`` naming close matches; ``info`` is the lookup that raises it, by default
    ``models.model_info``); a pattern matching nothing, or an entry that is not a string,
    raises ``ValueError`` naming ``where``.
    """
    from models import list_models, model_info

    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return list_models()
    entries = spec.split(",") if isinstance(spec, str) else list(spec)
    lookup = info or model_info
    names: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"{where}: not a model name: {entry!r}")
        part = entry.strip()
        if not part:
            continue
        if any(ch in part for ch in "*?["):
            found = list_models(part)
            if not found:
                raise ValueError(
                    f"{where}: pattern {part!r} matches no registered model; "
                    f"known: {', '.join(list_models())}"
                )
        else:
            lookup(part)  # raises UnknownModelError naming close matches
            found = [part]
        names += [n for n in found if n not in names]
    if not names:
        raise ValueError(f"{where}: give at least one model name or pattern")
    return names
