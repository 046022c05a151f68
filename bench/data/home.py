"""Where segbench keeps its caches and generated split files (:func:`cache_home`).

Its own module because both :mod:`bench.data.cache` (the preprocessing cache, the default
split file) and :mod:`bench.data.splits` (the duplicate-hash cache of a split) need the
place, and ``cache`` imports ``splits``: here neither imports the other for it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """Where segbench keeps caches and generated split files: ``$SEGBENCH_CACHE``, else
    ``$XDG_CACHE_HOME/segbench``, else ``~/.cache/segbench``."""
    env = os.environ.get("SEGBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segbench"
