"""Progress bars: tqdm on stderr, only when asked for and stderr is a terminal.

A log file or CI output (stderr not a TTY) gets no carriage-return spam;
``SEGBENCH_PROGRESS=1`` forces bars on, ``SEGBENCH_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["progress_bar", "show_progress"]


def show_progress(enabled: bool = True) -> bool:
    """Whether a bar is drawn: ``enabled``, and stderr is a terminal (or forced)."""
    if not enabled:
        return False
    forced = os.environ.get("SEGBENCH_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any):
    """A ``tqdm`` bar on stderr (``kwargs`` go to tqdm), disabled per :func:`show_progress`."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not show_progress(enabled), **kwargs)
