"""The metric table: every test-split metric once, with its unit, scale and direction.

``metrics.json["test"]`` holds fractions in [0, 1] (HD95 in pixels); this table says how
each is shown and compared. :mod:`bench.analysis.runs` (summaries over seeds),
:mod:`bench.analysis.report` (accuracy tables) and the tests of
:mod:`bench.engine.metrics` read it, so adding a metric is one entry here plus its
computation in :class:`bench.engine.metrics.MetricAccumulator`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS", "Metric", "metric"]


@dataclass(frozen=True)
class Metric:
    """One test-split metric (a key of ``metrics.json["test"]``)."""

    key: str
    label: str  # report table header without the unit, e.g. "DSC pooled"
    unit: str  # "%" (a fraction shown x100) or "px"
    scale: float  # stored value x scale = shown value
    decimals: int  # digits shown in tables
    higher_is_better: bool
    summary_header: str | None = None  # header in sweep_summary.md; None: not shown there
    in_report: bool = False  # a column of the report's accuracy tables

    @property
    def percent(self) -> bool:
        return self.unit == "%"

    @property
    def header(self) -> str:
        """Report header with the unit, e.g. ``DSC pooled (%)``."""
        return f"{self.label} ({self.unit})"

    @property
    def column(self) -> str:
        """Stem of the report's ``<stem>_mean`` / ``<stem>_std`` columns (``dice_mean`` -> ``dice``)."""
        return self.key.removesuffix("_mean")


# Order: the order of metrics.json's summaries over seeds (sweep_summary.{csv,json}).
METRICS: tuple[Metric, ...] = (
    Metric("dsc", "DSC pooled", "%", 100, 2, True, "DSC % (pooled)", in_report=True),
    Metric("miou", "mIoU pooled", "%", 100, 2, True, "mIoU % (pooled)", in_report=True),
    Metric("dice_mean", "Dice per-image", "%", 100, 2, True, "Dice % (per image)", in_report=True),
    Metric("iou_mean", "IoU per-image", "%", 100, 2, True, "IoU % (per image)"),
    Metric("hd95_mean", "HD95", "px", 1, 1, False, "HD95 px", in_report=True),
    Metric("hd95_median", "HD95 median", "px", 1, 1, False),
    Metric("isic_jaccard", "ISIC Jaccard", "%", 100, 2, True, "ISIC Jaccard %"),
    Metric("acc", "Acc pooled", "%", 100, 2, True),
    Metric("sen", "Sen pooled", "%", 100, 2, True),
    Metric("spe", "Spe pooled", "%", 100, 2, True),
)


def metric(key: str) -> Metric:
    """The table entry of ``key``; a KeyError lists the known keys."""
    for m in METRICS:
        if m.key == key:
            return m
    raise KeyError(f"unknown metric {key!r}; known: {', '.join(m.key for m in METRICS)}")
