"""The deployment tables of ``segbench export`` (``export`` and ``precision``): merging a
command's rows into ``<stem>.{csv,json}``, one host per table, each row stamped with what
produced it.

The speed files have their own writer (:func:`bench.speed.files.write_results`): they
group rows by measuring run under a folder lock and check each run's host and roofline
peak, which these tables (one command's rows per model) do not need. Both write through
:mod:`bench.core.io` (atomic).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

__all__ = ["merge_write"]


def merge_write(df: pd.DataFrame, stem: Path, key: list[str]) -> None:
    """Merge ``df`` into ``<stem>.{csv,json}``: rows with the same ``key`` are replaced.

    Each new row is stamped with what produced it (commit, command, the host's
    ``device_name`` in ``cpu``, 1-minute load average), so rows merged from several
    commands keep their own provenance; the file's ``environment`` is the latest command's.
    One table holds one host: rows timed on another host (another ``cpu``) are dropped with
    a warning, never mixed with the new ones (latencies and speedups of two machines in one
    table read as one machine's).
    """
    from bench.core.env import command_line, environment
    from bench.core.io import read_json, write_csv, write_json

    env = environment("cpu")
    load = env.get("load_average") or [float("nan")]
    host = str(env.get("device_name") or "")
    df = df.assign(
        cpu=host,
        load_avg_1min=load[0],
        git_commit=env.get("git_commit"),
        command=command_line(),
    )

    json_path = stem.with_suffix(".json")
    old = pd.DataFrame()
    if json_path.exists():
        try:
            old = pd.DataFrame(read_json(json_path)["rows"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{json_path}: not a segbench export table ({err})") from err
    if len(old):
        other = old["cpu"].astype(str) != host if "cpu" in old else pd.Series(True, old.index)
        if other.any():
            hosts = sorted(set(old.loc[other, "cpu"].astype(str))) if "cpu" in old else ["?"]
            warnings.warn(
                f"{json_path}: dropped {int(other.sum())} row(s) measured on "
                f"{', '.join(hosts)}: one deployment table holds one host ({host})",
                stacklevel=3,
            )
            old = old[~other]
    if len(old) and all(k in old for k in key):
        new_keys = set(map(tuple, df[key].astype(str).values))
        old = old[[tuple(v) not in new_keys for v in old[key].astype(str).values]]
    merged = pd.concat([old, df], ignore_index=True) if len(old) else df
    merged = merged.sort_values(key, kind="stable").reset_index(drop=True)
    write_csv(stem.with_suffix(".csv"), merged)
    records = json.loads(merged.to_json(orient="records"))
    write_json(json_path, {"environment": env, "rows": records})
