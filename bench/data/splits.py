"""Splits: the layout's official split, or a seeded test part plus a validation part carved from train, stored in a split file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.io import read_json, write_json
from bench.data.layouts import SPLITS, DataError, DatasetIndex


def make_split(
    ids: Sequence[str],
    seed: int = 42,
    test_fraction: float = 0.3,
    val_fraction: float = 0.1,
    test_ids: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """A deterministic seeded split of ``ids`` into train / val / test (each sorted).

    ``test_fraction`` of all IDs go to test (the papers' 7:3), then ``val_fraction`` of
    the rest to val. With ``test_ids`` the test part is given (e.g. the authors' test
    folder) and only val is carved from the other IDs.
    """
    for name, frac in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name}={frac}: must be in [0, 1)")
    rng = np.random.default_rng(seed)
    if test_ids is None:
        pool = sorted(ids)
        order = [pool[i] for i in rng.permutation(len(pool))]
        n_test = int(round(test_fraction * len(pool)))
        test, rest = order[:n_test], order[n_test:]
    else:
        test = list(test_ids)
        tset = set(test)
        rest = sorted(i for i in ids if i not in tset)
        rest = [rest[i] for i in rng.permutation(len(rest))]
    n_val = int(round(val_fraction * len(rest)))
    return {"train": sorted(rest[n_val:]), "val": sorted(rest[:n_val]), "test": sorted(test)}


def _resolve_split(
    index: DatasetIndex,
    split_file: Path,
    seed: int,
    test_fraction: float,
    val_fraction: float,
    split_mode: str,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    ids = index.ids
    official = index.official_split_ids()
    if split_mode not in ("auto", "official", "seeded"):
        raise ValueError(f"split_mode={split_mode!r}: choose auto, official or seeded")
    if split_file.is_file():
        try:
            saved = read_json(split_file)
            split = {k: list(saved["splits"][k]) for k in SPLITS}
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{split_file}: not a segbench split file ({err})") from None
        listed = {i for v in split.values() for i in v}
        missing, extra = sorted(listed - set(ids)), sorted(set(ids) - listed)
        if missing or extra:
            raise DataError(
                f"{split_file}: does not match {index.root}: {len(missing)} listed ID(s) not in the "
                f"dataset {missing[:5]}, {len(extra)} dataset ID(s) not listed {extra[:5]}; delete it "
                "or pass another split file"
            )
        # seeded parts: the whole split, or only val when carved from an official train
        asked = {}
        if saved.get("source") == "seeded":
            asked = {"seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction}
        elif saved.get("source") == "official" and "val" not in official:
            asked = {"seed": seed, "val_fraction": val_fraction}
        if asked:
            got = {k: saved.get(k) for k in asked}
            if got != asked:
                raise DataError(
                    f"{split_file}: made with {got}, but {asked} was asked; the split "
                    "seed is not the training seed. Delete the file or pass another "
                    "split file to make a new split"
                )
        return split, saved
    has_official = set(index.layout.official_splits) >= {"train", "test"}
    if split_mode == "official" and not has_official:
        raise DataError(
            f"{index.root}: layout {index.layout.name} has no official train/test split "
            f"(found {sorted(official) or 'none'})"
        )
    if has_official and split_mode != "seeded":
        source = "official"
        if "val" in official:
            split = {k: sorted(official.get(k, [])) for k in SPLITS}
        else:  # e.g. the authors' layout: carve val from train
            split = make_split(
                official["train"] + official["test"],
                seed,
                test_fraction,
                val_fraction,
                test_ids=official["test"],
            )
    else:
        source = "seeded"
        split = make_split(ids, seed, test_fraction, val_fraction)
    meta = {
        "format": "segbench-split/1",
        "dataset": str(index.root),
        "layout": index.layout.name,
        "source": source,
        "seed": seed,
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
        "counts": {k: len(v) for k, v in split.items()},
        "splits": split,
    }
    write_json(split_file, meta)
    return split, meta
