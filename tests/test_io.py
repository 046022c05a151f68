"""Atomic result writes."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.core.io import read_json, write_csv, write_json


def test_write_json_roundtrip_and_no_temp_left(tmp_path) -> None:
    path = write_json(tmp_path / "sub" / "r.json", {"a": 1, "b": [1.5]})
    assert read_json(path) == {"a": 1, "b": [1.5]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    path = write_json(tmp_path / "r.json", {"old": True})

    class Boom:
        def to_csv(self, fh, index=False):
            fh.write("half a row")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_csv(path, Boom())
    assert read_json(path) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    write_csv(tmp_path / "t.csv", pd.DataFrame({"x": [1]}))
    assert (tmp_path / "t.csv").read_text().splitlines() == ["x", "1"]


def test_read_json_names_a_malformed_file(tmp_path) -> None:
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        read_json(bad)
