"""``segbench weights``: list committed trained weights, publish a run's best checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from models.weights import STORE_ENV, list_weights, weights_dir

    entries = list_weights(args.model)
    rows = [
        [
            e.model,
            e.name,
            e.precision,
            f"{100 * e.meta['test']['dsc']:.2f}",
            e.sha256[:12],
            _where(e),
            e.meta.get("run", ""),
        ]  # fmt: skip
        for e in entries
    ]
    if not rows:
        print(f"no weights listed in {weights_dir() / 'index.json'}")
        return 0
    headers = ["model", "weights", "precision", "test DSC (%)", "sha256", "file", "trained by run"]
    print(tabulate(rows, headers=headers))
    print('\nload with: create_model("<model>", weights="<weights>")')
    if any(e.path is None for e in entries):
        print(
            f"weights kept outside git load once a copy sits at <store>/<model>/<weights>.pt "
            f"and {STORE_ENV} lists <store> (the sha256 is checked)"
        )
    return 0


def _where(entry: Any) -> str:
    """Where the entry's file is on this machine (or that it is not here)."""
    if entry.store == "repo":
        return "committed" if entry.path.is_file() else "missing"
    path = entry.path
    mb = entry.meta.get("bytes", 0) / 1e6
    return f"external, here: {path.parent.parent}" if path else f"external ({mb:.1f} MB), not here"


def _cmd_publish(args: argparse.Namespace) -> int:
    from bench.jobs.weights import publish_run

    failed = 0
    for run in args.runs:
        try:
            e = publish_run(run, args.name, force=args.force, store=args.store)
        except ValueError as err:
            print(f"error: {err}")
            failed += 1
            continue
        print(f"{e['model']}:{e['name']} -> {e['file']} (sha256 {e['sha256'][:12]})")
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "weights",
        help="committed trained weights: list them, publish a run's best checkpoint",
        description="Trained weights that ship with segbench, loadable by name with "
        "create_model(MODEL, weights=NAME) and verified by sha256 (models/weights.py).",
    )
    sub = p.add_subparsers(dest="weights_command", required=True, metavar="COMMAND")
    q = sub.add_parser("list", help="the committed weights as a table")
    q.add_argument("--model", default=None, help="only this model's weights")
    q.set_defaults(func=_cmd_list)
    q = sub.add_parser(
        "publish",
        help="copy finished runs' best checkpoints into results/weights and index them",
        description="Copy each finished run's checkpoints/best.pt model state_dict to "
        "results/weights/<model>/<name>.pt and list it in results/weights/index.json. "
        "Files over 10 MB (git's limit here) go to --store DIR outside git instead; the "
        "committed index still pins their sha256.",
    )
    q.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished run folders")
    q.add_argument(
        "--name",
        default=None,
        help="weights name (default: <dataset>-<recipe>-e<epochs>-s<seed>; one run only)",
    )
    q.add_argument("--force", action="store_true", help="replace weights of the same name")
    q.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the file to DIR/<model>/<name>.pt outside git (index entry: store "
        "'external'; users list DIR in SEGBENCH_WEIGHTS_STORE to load it)",
    )
    q.set_defaults(func=_cmd_publish)
