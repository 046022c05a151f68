"""The report's guard: every speed or deployment table holds one host and one measuring run.

A speed file whose rows come from two hosts or two roofline peaks (two measuring runs, see
:mod:`bench.speed.sessions`) is refused with a message naming the file, both runs and the
repair; so is a deployment table (``deploy/precision.csv``) whose rows name two hosts.
The writers no longer produce such files; this catches files written before they refused,
or merged by hand.
"""

from __future__ import annotations

from bench.analysis.report.load import ReportInputError, Results
from bench.speed.sessions import MixedSpeedFileError, check_one_measuring_run


def check_hosts(res: Results) -> None:
    """Raise :class:`ReportInputError` on a speed or deployment table that mixes hosts or
    measuring runs."""
    for slug, df in res.speed.items():
        runs = res.speed_meta.get(slug, {}).get("runs") or {}
        path = res.root / "speed" / f"speed-{slug}.csv"
        records = df.astype(object).where(df.notna(), None).to_dict(orient="records")
        try:
            check_one_measuring_run(records, runs, str(path))
        except MixedSpeedFileError as err:
            raise ReportInputError(str(err)) from err
    dep = res.deploy
    if not dep.empty:
        hosts = sorted(set(dep["cpu"].dropna().astype(str))) if "cpu" in dep else []
        path = res.root / "deploy" / "precision.csv"
        # a table without the column (written before rows were stamped) is shown with
        # "host not recorded" in its note (write.py), not refused
        if len(hosts) > 1:
            raise ReportInputError(
                f"{path}: rows from {len(hosts)} hosts ({'; '.join(hosts)}) in one table; "
                "re-run `segbench export --int8/--bf16` on one host (its writer now drops "
                "another host's rows)"
            )


def deploy_host(res: Results) -> str:
    """The host named by the deployment table's rows ('' without a table)."""
    dep = res.deploy
    if dep.empty or "cpu" not in dep or dep["cpu"].dropna().empty:
        return ""
    return str(dep["cpu"].dropna().iloc[0])
