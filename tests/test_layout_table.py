"""Dataset layouts are one table: a new entry is detected, indexed, named and listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.data import layouts
from bench.data.layouts import DataError, Layout, LayoutSpec, Sample, dataset_name
from bench.data.synthetic import make_synthetic


def test_one_table_entry_adds_a_layout(tmp_path, monkeypatch):
    root = make_synthetic(tmp_path / "syn", n=4, size=(32, 32))
    (root / "images").rename(root / "pics")  # no longer the flat layout

    def detect(r: Path) -> Layout | None:
        return Layout("pics", r, "pics/ + masks/") if (r / "pics").is_dir() else None

    def index(layout: Layout, suffix: str | None, problems: list) -> list[Sample]:
        return [
            Sample(p.stem, p, layout.base / "masks" / f"{p.stem}.png")
            for p in sorted((layout.base / "pics").iterdir())
        ]

    with pytest.raises(DataError, match=r"Tried: official ISIC 2017 .* flat \(images/ \+ masks/\)"):
        layouts.detect_layout(root)
    spec = LayoutSpec("pics", "pics (pics/ + masks/)", detect, index, named_by_layout=True)
    monkeypatch.setattr(layouts, "LAYOUT_SPECS", (*layouts.LAYOUT_SPECS, spec))
    index_ = layouts.index_dataset(root)
    assert index_.layout.name == "pics" and len(index_) == 4
    assert dataset_name(index_.layout, root) == "pics"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"pics \(pics/ \+ masks/\)"):
        layouts.detect_layout(tmp_path / "empty")
