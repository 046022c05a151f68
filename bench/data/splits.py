"""Splits: the layout's official split, or a seeded test part plus a validation part carved from train, stored in a split file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.io import read_json, write_json
from bench.data.layouts import SPLITS, DataError, DatasetIndex

#: How a split is made (``prepare_data(split_mode=...)``, ``TrainConfig.split_mode``):
#: ``auto``: the layout's official split when it defines train and test, or when it holds
#: only official validation / test parts (an evaluation-only folder: those parts are used
#: as they are, never re-split), else seeded;
#: ``official``: the layout's split, an error when it has none;
#: ``seeded``: the papers' protocol, a seeded ``test_fraction`` (7:3) split of the images
#: they pooled: on an official ISIC download the training + validation parts (the
#: challenge test part, which the papers never used, is left out and recorded as
#: ``excluded`` in the split file), elsewhere every image.
SPLIT_MODES = ("auto", "official", "seeded")

_ISIC_LAYOUTS = ("isic2017", "isic2018")


def split_source(index: DatasetIndex, split_mode: str) -> str:
    """``"official"`` or ``"seeded"``: what ``split_mode`` makes of this folder.

    Raises :class:`DataError` for ``official`` on a layout without an official train/test
    split, and ``ValueError`` for an unknown mode.
    """
    if split_mode not in SPLIT_MODES:
        raise ValueError(f"split_mode={split_mode!r}: choose one of {', '.join(SPLIT_MODES)}")
    has_official = set(index.layout.official_splits) >= {"train", "test"}
    if split_mode == "official" and not (has_official or evaluation_only(index)):
        raise DataError(
            f"{index.root}: layout {index.layout.name} has no official train/test split "
            f"(found {sorted(index.official_split_ids()) or 'none'}); use split_mode auto or "
            "seeded"
        )
    if split_mode == "seeded":
        return "seeded"
    return "official" if has_official or evaluation_only(index) else "seeded"


def evaluation_only(index: DatasetIndex) -> bool:
    """The folder holds official parts but no official training part (e.g. only
    ``ISIC-2017_Validation_Data`` + its ground truth): it can be scored, not trained on."""
    parts = set(index.layout.official_splits)
    return bool(parts) and "train" not in parts


def _excluded_ids(index: DatasetIndex, split_mode: str) -> list[str]:
    """IDs a ``seeded`` split leaves out: an official ISIC download's test part."""
    if split_mode != "seeded" or index.layout.name not in _ISIC_LAYOUTS:
        return []
    return sorted(index.official_split_ids().get("test", []))


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
    official = index.official_split_ids()
    source = split_source(index, split_mode)
    excluded = _excluded_ids(index, split_mode)
    ids = sorted(set(index.ids) - set(excluded))
    if split_file.is_file():
        try:
            saved = read_json(split_file)
            split = {k: list(saved["splits"][k]) for k in SPLITS}
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{split_file}: not a segbench split file ({err})") from None
        saved_source = saved.get("source")  # None: a hand-made file, taken as it is
        saved_excluded = sorted(saved.get("excluded", []))
        # never silently reuse a split of another kind (e.g. a seeded re-split of an
        # official validation folder made before such folders were scored as they are)
        if saved_source is not None and (
            saved_source != source or (split_mode != "auto" and saved_excluded != excluded)
        ):
            raise DataError(
                f"{split_file}: holds a {saved_source} split"
                + (f" leaving out {len(saved_excluded)} image(s)" if saved_excluded else "")
                + f", but split_mode={split_mode!r} makes a {source} split"
                + (f" leaving out {len(excluded)} image(s)" if excluded else "")
                + f" of {index.root}; delete the file, pass another split file or choose "
                "the split_mode that made it"
            )
        listed = {i for v in split.values() for i in v}
        pool = set(index.ids) - set(saved_excluded)
        missing, extra = sorted(listed - pool), sorted(pool - listed)
        if missing or extra:
            raise DataError(
                f"{split_file}: does not match {index.root}: {len(missing)} listed ID(s) not in the "
                f"dataset {missing[:5]}, {len(extra)} dataset ID(s) not listed {extra[:5]}; delete it "
                "or pass another split file"
            )
        # seeded parts: the whole split, or only val when carved from an official train
        asked = {}
        if saved_source == "seeded":
            asked = {"seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction}
        elif saved_source == "official" and "val" not in official and not evaluation_only(index):
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
    if source == "official":
        if "val" in official or evaluation_only(index):
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
        if not ids:
            raise DataError(
                f"{index.root}: no images left to split (split_mode={split_mode!r} leaves out "
                f"the official test part, {len(excluded)} image(s))"
            )
        split = make_split(ids, seed, test_fraction, val_fraction)
    meta = {
        "format": "segbench-split/1",
        "dataset": str(index.root),
        "layout": index.layout.name,
        "source": source,
        "split_mode": split_mode,
        "seed": seed,
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
        "counts": {k: len(v) for k, v in split.items()},
        "splits": split,
    }
    if excluded:
        meta["excluded"] = excluded
    write_json(split_file, meta)
    return split, meta
