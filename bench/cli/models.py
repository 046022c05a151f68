"""``segbench models``: the model registry as a table."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.cli.common import add_import


def _cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from models import create_model, list_models, model_info

    rows = []
    names = list_models(args.pattern)
    if not names:
        print(f"no registered model matches {args.pattern!r}", file=sys.stderr)
        return 2
    for name in names:
        info = model_info(name)
        model = create_model(name)
        params = sum(p.numel() for p in model.parameters())
        rep = info.reported
        rows.append(
            {
                "model": name,
                "full name": info.full_name,
                "year": info.year,
                "citation": info.citation,
                "params": f"{params:,}",
                "paper params (M)": rep.get("params_m", ""),
                "paper GFLOPs": rep.get("gflops", ""),
                "input H, W": f"x{info.input_multiple}, >= {info.min_input}",
                "source": info.source or "segbench",
            }
        )
    df = pd.DataFrame(rows)
    if args.markdown:
        print(df.to_markdown(index=False))
    else:
        print(df.to_markdown(index=False, tablefmt="simple"))
    return 0


def register(subparsers: Any) -> None:
    """Add ``segbench models``."""
    p = subparsers.add_parser(
        "models",
        help="list the model registry as a table",
        description="List registered models with parameter counts and the "
        "figures their papers report.",
    )
    p.add_argument(
        "pattern",
        nargs="?",
        default=None,
        help="wildcard pattern(s), comma-separated (e.g. 'smp_*,malunet')",
    )
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    add_import(p)
    p.set_defaults(func=_cmd_models)
