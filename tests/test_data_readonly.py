"""Data folders are read-only to segbench: split, train and evaluate leave them byte-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.cli import main
from bench.data.synthetic import make_synthetic


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file and folder under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def test_split_train_evaluate_leave_the_dataset_untouched(tmp_path, capsys) -> None:
    root = make_synthetic(tmp_path / "data", n=16, seed=1, size=(48, 48))
    before = _snapshot(root)
    assert before  # the snapshot sees the files

    assert main(["data", "split", str(root)]) == 0
    assert _snapshot(root) == before

    results = tmp_path / "results"
    train = ["train", "--model", "malunet", "--data", str(root), "--epochs", "1"]
    train += ["--input-size", "32", "--batch-size", "4", "--device", "cpu", "--threads", "1"]
    assert main([*train, "--results", str(results), "--quiet"]) == 0
    assert _snapshot(root) == before
    (best,) = results.glob("runs/*/malunet/*/seed*/checkpoints/best.pt")

    evaluate = ["evaluate", "--model", "malunet", "--checkpoint", str(best)]
    evaluate += ["--data", str(root), "--input-size", "32", "--device", "cpu", "--no-hd95"]
    assert main([*evaluate, "--results", str(tmp_path / "eval"), "--quiet"]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert _snapshot(root) == before


def test_writing_beside_the_data_is_opt_in(tmp_path) -> None:
    root = make_synthetic(tmp_path / "data", n=12, seed=1, size=(40, 40))
    split = root / "split.json"
    assert main(["data", "split", str(root), "--split-file", str(split)]) == 0
    assert split.is_file()
