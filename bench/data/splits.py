"""Splits: the layout's official split, or a seeded test part plus a validation part carved from train, stored in a split file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.core.io import read_json, write_json
from bench.data.home import cache_home
from bench.data.layouts import SPLITS, DataError, DatasetIndex

if TYPE_CHECKING:
    from bench.data.duplicates import DuplicateGroup

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
    groups: Sequence[Sequence[str]] = (),
) -> dict[str, list[str]]:
    """A deterministic seeded split of ``ids`` into train / val / test (each sorted).

    ``test_fraction`` of all IDs go to test (the papers' 7:3), then ``val_fraction`` of
    the rest to val. With ``test_ids`` the test part is given (e.g. the authors' test
    folder) and only val is carved from the other IDs.

    ``groups``: IDs that must stay on one side (copies of one image, see
    :mod:`bench.data.duplicates`). The IDs are shuffled as before and handed out in that
    order; a group goes where its first member falls, unless it would overfill that
    part, in which case it goes to the other and the next IDs fill the gap. Without
    groups this is exactly the ungrouped split (first ``n`` of the shuffled order).
    """
    for name, frac in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= frac < 1:
            raise ValueError(f"{name}={frac}: must be in [0, 1)")
    unit_of: dict[str, tuple[str, ...]] = {}
    for g in groups:
        for i in g:
            unit_of[i] = tuple(g)
    rng = np.random.default_rng(seed)
    if test_ids is None:
        pool = sorted(ids)
        order = [pool[i] for i in rng.permutation(len(pool))]
        n_test = int(round(test_fraction * len(pool)))
        test, rest = _fill(order, n_test, unit_of)
    else:
        test = list(test_ids)
        tset = set(test)
        rest = sorted(i for i in ids if i not in tset)
        rest = [rest[i] for i in rng.permutation(len(rest))]
    n_val = int(round(val_fraction * len(rest)))
    val, train = _fill(rest, n_val, unit_of)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _fill(
    order: Sequence[str], n: int, unit_of: dict[str, tuple[str, ...]]
) -> tuple[list[str], list[str]]:
    """``order`` cut into a first part of ``n`` IDs and the rest, whole groups at a time
    (each group's members that are in ``order``), both in ``order``'s order."""
    present = set(order)
    first: list[str] = []
    second: list[str] = []
    placed: set[str] = set()
    for i in order:
        if i in placed:
            continue
        unit = [m for m in unit_of.get(i, (i,)) if m in present and m not in placed]
        placed.update(unit)
        (first if len(first) + len(unit) <= n else second).extend(unit)
    rank = {i: k for k, i in enumerate(order)}
    return sorted(first, key=rank.__getitem__), sorted(second, key=rank.__getitem__)


def split_duplicates(
    index: DatasetIndex,
    split: dict[str, list[str]],
    threshold: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The duplicate groups of ``index`` and those that ``split`` puts on more than one
    side: ``{"method", "threshold", "groups": [...], "leaks": [...]}`` (see
    :mod:`bench.data.duplicates`). Hashes are cached under the preprocessing cache."""
    groups, thr = _duplicate_groups(index, threshold, progress)
    return _duplicate_record(groups, thr, split)


def _duplicate_groups(
    index: DatasetIndex, threshold: int | None = None, progress: bool = False
) -> tuple[list[DuplicateGroup], int]:
    """(the duplicate groups of every image of ``index``, the pHash threshold used)."""
    from bench.data.duplicates import NEAR_THRESHOLD, find_duplicates

    thr = NEAR_THRESHOLD if threshold is None else threshold
    groups, _ = find_duplicates(index, threshold=thr, cache_root=cache_home(), progress=progress)
    return groups, thr


def _duplicate_record(
    groups: Sequence[DuplicateGroup], threshold: int, split: dict[str, list[str]]
) -> dict[str, Any]:
    """The record of :func:`split_duplicates` for groups already found."""
    from bench.data.duplicates import straddling

    return {
        "method": DUPLICATE_METHOD,
        "threshold": threshold,
        "groups": [g.as_dict() for g in groups],
        "leaks": straddling(groups, split),
    }


#: how duplicate groups are found (recorded in split files and runs)
DUPLICATE_METHOD = "sha256 of decoded RGB pixels; imagehash.phash(hash_size=16) Hamming distance"


def warn_leaks(source: str, leaks: Sequence[dict[str, Any]]) -> None:
    """A :class:`DataWarning` naming every leaking duplicate group of a split."""
    import warnings

    from bench.data.duplicates import leak_summary
    from bench.data.layouts import DataWarning

    if leaks:
        warnings.warn(
            f"{source}: {len(leaks)} group(s) of duplicate images lie on more than one side "
            f"of the split (a model is scored on copies of images it trained on): "
            f"{leak_summary(leaks, limit=10)}. The run records them; a seeded split made "
            "by this version keeps each group on one side (delete the split file to "
            "make one)",
            DataWarning,
            stacklevel=3,
        )


def resolve_split(
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
        dups = split_duplicates(index, split)
        warn_leaks(str(split_file), dups["leaks"])
        return split, {**saved, "duplicates": dups}
    # duplicate groups of the pool: a seeded split keeps each group on one side; found
    # once, then checked against the split made (only an official part can split one)
    found, thr = _duplicate_groups(index)
    groups = [list(g.ids) for g in found]
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
                groups=groups,
            )
    else:
        if not ids:
            raise DataError(
                f"{index.root}: no images left to split (split_mode={split_mode!r} leaves out "
                f"the official test part, {len(excluded)} image(s))"
            )
        split = make_split(ids, seed, test_fraction, val_fraction, groups=groups)
    dups = _duplicate_record(found, thr, split)
    warn_leaks(f"{index.root} ({source} split)", dups["leaks"])
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
        # duplicate groups kept on one side (seeded parts); "leaks": groups that still
        # straddle (only possible where an official part fixes the sides)
        "duplicates": dups,
        "splits": split,
    }
    if excluded:
        meta["excluded"] = excluded
    write_json(split_file, meta)
    return split, meta
