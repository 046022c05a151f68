"""A run's provenance: code fingerprint and training cost across resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.engine.provenance import CODE_ROOTS, code_fingerprint, training_cost

REPO = Path(__file__).resolve().parents[1]


def _rows(dsc: list[float | None], host: str = "h1") -> list[dict]:
    return [
        {"epoch": k + 1, "epoch_time_s": 10.0, "val_time_s": 1.0, "host": host, "val_dsc": d}
        for k, d in enumerate(dsc)
    ]


def test_training_cost_sums_every_epoch_and_finds_99pct_of_best():
    # rows of a run resumed once on another host: the history carries both processes' epochs
    hist = _rows([0.5, 0.80, 0.905]) + _rows([0.91, 0.90], host="h2")
    hist[3]["epoch"], hist[4]["epoch"] = 4, 5
    c = training_cost(hist, "val")
    assert c["train_time_total_s"] == pytest.approx(55.0)
    # best 0.91; 99% of it is 0.9009: first reached at epoch 3 (0.905)
    assert c["epoch_to_99pct_best"] == 3 and c["time_to_99pct_best_s"] == pytest.approx(33.0)
    assert c["hosts"] == ["h1", "h2"]


def test_training_cost_without_validation_rows():
    c = training_cost(_rows([None, None]), "val")
    assert c["time_to_99pct_best_s"] is None and c["train_time_total_s"] == pytest.approx(22.0)
    assert training_cost([], None)["train_time_total_s"] is None


def test_code_fingerprint_follows_the_result_deciding_code_only(tmp_path):
    for rel in CODE_ROOTS:
        shutil.copytree(REPO / rel, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "bench" / "analysis").mkdir(parents=True)
    base = code_fingerprint(tmp_path)
    assert base == code_fingerprint(REPO)  # the same code gives the same fingerprint
    (tmp_path / "bench" / "analysis" / "x.py").write_text("# report code\n")
    assert code_fingerprint(tmp_path) == base
    loss = tmp_path / "bench" / "engine" / "losses.py"
    loss.write_text(loss.read_text() + "\n# changed\n")
    assert code_fingerprint(tmp_path) != base
