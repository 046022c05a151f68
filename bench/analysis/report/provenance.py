"""Where each result file came from, as the report's README says it: the command, machine,
commit and versions recorded with it, and a ``segbench train`` command equivalent to each
accuracy row's runs (the section "Provenance of the accuracy rows").

Split from :mod:`bench.analysis.report.readme`, which lays the README out; this module
reads the recorded provenance (result-file metadata, run configs and environments).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from bench.analysis.report.load import Results
from bench.analysis.runs import EXPERIMENT_KEY


def env_lines(env: dict[str, Any]) -> list[str]:
    """A recorded environment (``bench.core.env.environment``) as README bullet lines:
    CPU, GPU, platform, commit, versions (only what was recorded)."""
    lines = []
    if env.get("cpu"):
        lines.append(
            f"- CPU: {env['cpu']} ({env.get('cpu_count', '?')} logical cores, "
            f"torch threads {env.get('torch_threads', '?')})"
        )
    if env.get("device") == "cuda":
        lines.append(
            f"- GPU: {env.get('device_name')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')})"
        )
    if env.get("platform"):
        lines.append(f"- platform: {env['platform']}")
    if env.get("git_commit"):
        lines.append(f"- git commit: `{env['git_commit']}`")
    vers = env.get("versions") or {}
    if vers:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    return lines


def meta_runs(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs a result file records: ``{"runs": {run_id: meta}}`` or a single top level."""
    runs = meta.get("runs")
    if isinstance(runs, dict) and runs:
        return [v for _, v in sorted(runs.items()) if isinstance(v, dict)]
    return [meta] if meta else []


def provenance_line(meta: dict[str, Any]) -> str:
    """One line on where a result file came from: its command(s), and the device, commit
    and torch version of its last run; ``"no provenance recorded"`` when it holds none."""
    runs = meta_runs(meta)
    if not runs:
        return "no provenance recorded"
    cmds = []
    for run in runs:
        cmd = run.get("command") or run.get("argv")
        if isinstance(cmd, list):
            cmd = shlex.join(str(c) for c in cmd)
        if cmd and cmd not in cmds:
            cmds.append(str(cmd))
    env = runs[-1].get("environment") or {}
    parts = []
    if cmds:
        parts.append(
            ("command " if len(cmds) == 1 else f"{len(cmds)} commands ")
            + "; ".join(f"`{c}`" for c in cmds)
        )
    if env:
        dev = env.get("device_name") or env.get("cpu")
        parts.append(f"on {dev}")
        if env.get("git_commit"):
            parts.append(f"commit `{str(env['git_commit'])[:12]}`")
        ver = (env.get("versions") or {}).get("torch")
        if ver:
            parts.append(f"torch {ver}")
    return ", ".join(parts) if parts else "no provenance recorded"


def short_commit(commit: str) -> str:
    """A commit to 12 characters, ``-dirty`` spelled out as ``(dirty tree)``."""
    dirty = commit.endswith("-dirty")
    return commit.removesuffix("-dirty")[:12] + (" (dirty tree)" if dirty else "")


def reproduce_command(config: dict[str, Any] | None, seeds: list[int]) -> str | None:
    """A ``segbench train`` command equivalent to a stored run config (None when the
    recipe is not a built-in one or the config is missing): the recipe's fields that the
    run changed become ``--set`` overrides."""
    from bench.engine.config import RUNTIME_FIELDS, TrainConfig

    if not config or not config.get("recipe"):
        return None
    try:
        base = TrainConfig.from_recipe(str(config["recipe"])).to_dict()
    except (ValueError, FileNotFoundError):
        return None
    parts = [
        "segbench train",
        f"--model {config.get('model')}",
        f"--data {shlex.quote(str(config.get('data') or '<dataset root>'))}",
    ]
    if config.get("dataset"):
        parts.append(f"--dataset {config['dataset']}")
    parts += [f"--recipe {config['recipe']}", f"--epochs {config.get('epochs')}"]
    if config.get("amp"):
        parts.append(f"--amp {config['amp']}")
    skip = set(RUNTIME_FIELDS) | {"model", "recipe", "epochs", "seed", "amp"}
    for key in sorted(set(base) & set(config) - skip):
        if json.dumps(base[key], sort_keys=True) != json.dumps(config[key], sort_keys=True):
            v = config[key]
            if isinstance(v, list):
                text = ",".join(map(str, v))
            elif isinstance(v, dict):
                text = json.dumps(v, sort_keys=True)
            elif v is None:
                text = "none"
            elif isinstance(v, bool):
                text = str(v).lower()
            else:
                text = str(v)
            parts.append(f"--set {shlex.quote(f'{key}={text}')}")
    seed = f"--seed {seeds[0]}" if len(seeds) == 1 else "--seed K"
    return " ".join([*parts, seed])


def provenance_section(res: Results) -> list[str]:
    """For each accuracy row: command, commit, machine and versions of its runs; runs
    made from a dirty tree (uncommitted changes) flagged."""
    if res.runs.empty and res.baselines.empty:
        return []
    lines = [
        "## Provenance of the accuracy rows",
        "",
        "Each experiment's runs: the command recorded in their manifest, an equivalent "
        "`segbench train` command, the git commit, machine and versions from their "
        "`metrics.json`. **dirty tree** marks runs made with uncommitted changes: their "
        "code is not exactly the commit named.",
        "",
    ]
    if not res.runs.empty:
        for key, g in res.runs.groupby(EXPERIMENT_KEY, sort=True, dropna=False):
            row = dict(zip(EXPERIMENT_KEY, key))
            seeds = sorted(int(s) for s in g["seed"])
            head = (
                f"- **{row['model']}**, {row['dataset']}, `{row['experiment']}`, "
                f"{row['precision']}, {len(seeds)} seed(s) ({', '.join(map(str, seeds))})"
            )
            if row["experiment_hash"]:
                head += f", experiment `{row['experiment_hash']}`"
            lines.append(head)
            cmds = sorted({c for c in g["command"] if c})
            lines.append(
                "  - recorded command(s): "
                + ("; ".join(f"`{c}`" for c in cmds) if cmds else "not recorded")
            )
            cfg = next((c for c in g["config"] if isinstance(c, dict)), None)
            repro = reproduce_command(cfg, seeds)
            if repro:
                lines.append(
                    f"  - equivalent: `{repro}`"
                    + (f" for K in {', '.join(map(str, seeds))}" if len(seeds) > 1 else "")
                )
            commits = sorted({str(c) for c in g["git_commit"] if c})
            lines.append(
                "  - commit: "
                + (
                    ", ".join(f"`{short_commit(c)}`" for c in commits)
                    if commits
                    else "not recorded"
                )
            )
            envs = [e for e in g["environment"] if isinstance(e, dict)]
            machines = sorted(
                {
                    f"{e.get('device_name') or e.get('cpu') or '?'} ({e.get('device', '?')})"
                    for e in envs
                }
            )
            versions = sorted(
                {", ".join(f"{k} {v}" for k, v in (e.get("versions") or {}).items()) for e in envs}
                - {""}
            )
            lines.append("  - machine: " + ("; ".join(machines) if machines else "not recorded"))
            lines.append("  - versions: " + (" | ".join(versions) if versions else "not recorded"))
            dirty = sorted(
                int(s) for s, c in zip(g["seed"], g["git_commit"]) if str(c).endswith("-dirty")
            )
            if dirty:
                lines.append(
                    "  - **dirty tree**: seed(s) "
                    + ", ".join(map(str, dirty))
                    + " ran with uncommitted changes"
                )
    for _, b in res.baselines.iterrows() if not res.baselines.empty else []:
        commit = str(b.get("git_commit") or "")
        lines.append(
            f"- **baseline: {b['kind']}**, {b['dataset']}: command "
            + (f"`{b['command']}`" if b["command"] else "not recorded")
            + (f", commit `{short_commit(commit)}`" if commit else "")
            + (" — **dirty tree**" if commit.endswith("-dirty") else "")
        )
    lines.append("")
    return lines
