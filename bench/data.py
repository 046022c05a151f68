"""Datasets: folder layouts, splits, a preprocessing cache, augmentation, bad-input checks.

Flow: :func:`detect_layout` recognises a root folder, :func:`index_dataset` pairs
images with masks by ID, :func:`prepare_data` fixes the split (official, or a
seeded 7:3 + validation split stored in ``split.json``) and builds or reuses a
memory-mapped uint8 cache of every image and mask resized once, and
:class:`PreparedData` hands out arrays, torch datasets and augmented batches.

Augmentation and scaling live in :mod:`bench.augment`, synthetic lesions in
:mod:`bench.synthetic`; both are re-exported here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.augment import DEFAULT_SCALING, SCALINGS, augment_batch, scale_images
from bench.io import read_json, write_json
from bench.synthetic import LAYOUTS as SYNTHETIC_LAYOUTS
from bench.synthetic import make_synthetic

__all__ = [
    "DEFAULT_SCALING",
    "LAYOUT_NAMES",
    "PREPROC_VERSION",
    "SCALINGS",
    "CachedDataset",
    "DataError",
    "DataWarning",
    "DatasetIndex",
    "FileDataset",
    "Layout",
    "PreparedData",
    "Problem",
    "Sample",
    "augment_batch",
    "check_dataset",
    "default_cache_root",
    "default_split_file",
    "detect_layout",
    "index_dataset",
    "load_pair",
    "make_split",
    "make_synthetic",
    "prepare_data",
    "register",
    "scale_images",
]

#: Bump when decoding / resizing changes: every cache built before is then rebuilt.
PREPROC_VERSION = 2
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
LAYOUT_NAMES = ("isic2017", "isic2018", "ph2", "prepared", "flat")
# Mask suffixes tried, in order, when none is given for flat / prepared layouts.
MASK_SUFFIXES = ("", "_segmentation", "_mask", "_Segmentation", "_lesion", "_gt")


class DataError(ValueError):
    """A dataset problem that stops loading; the message names the file(s)."""


class DataWarning(UserWarning):
    """A dataset oddity that loading works around (e.g. an RGBA image converted)."""


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`check_dataset`: ``severity`` is ``"error"`` or ``"warning"``."""

    path: Path
    kind: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


@dataclass(frozen=True)
class Layout:
    """A recognised folder layout. ``base`` is the folder the layout lives in."""

    name: str
    base: Path
    description: str
    official_splits: tuple[str, ...] = ()  # splits the layout itself defines (with masks)


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path | None
    split: str | None = None  # the split the layout puts it in, if any


@dataclass
class DatasetIndex:
    """Images paired with masks by ID, sorted by ID."""

    root: Path
    layout: Layout
    samples: list[Sample]
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}

    def official_split_ids(self) -> dict[str, list[str]]:
        """IDs per split as the layout defines them ({} when it defines none)."""
        out: dict[str, list[str]] = {}
        for s in self.samples:
            if s.split is not None:
                out.setdefault(s.split, []).append(s.id)
        return out


# ----------------------------------------------------------------------------- layouts


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS


def _image_files(folder: Path) -> list[Path]:
    """Image files in a folder, skipping ISIC superpixel maps and non-image files."""
    return sorted(
        p for p in folder.iterdir() if _is_image(p) and not p.stem.endswith("_superpixels")
    )


_ISIC_PATTERNS = {
    "isic2017": (
        re.compile(r"^ISIC-2017_(Training|Validation|Test_v2|Test)_Data$", re.I),
        re.compile(r"^ISIC-2017_(Training|Validation|Test_v2|Test)_Part1_GroundTruth$", re.I),
    ),
    "isic2018": (
        re.compile(r"^ISIC2018_Task1-2_(Training|Validation|Test)_Input$", re.I),
        re.compile(r"^ISIC2018_Task1_(Training|Validation|Test)_GroundTruth$", re.I),
    ),
}
_ISIC_SPLIT = {"training": "train", "validation": "val", "test": "test", "test_v2": "test"}
_PH2_DIR = "PH2 Dataset images"


def _subdirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _find_isic(root: Path, name: str) -> tuple[Path, dict[str, Path], dict[str, Path]] | None:
    """The folder holding official ISIC image / ground-truth folders (root or one below)."""
    img_re, gt_re = _ISIC_PATTERNS[name]
    for base in [root, *_subdirs(root)]:
        imgs, gts = {}, {}
        for d in _subdirs(base):
            if m := img_re.match(d.name):
                imgs[_ISIC_SPLIT[m.group(1).lower()]] = d
            elif m := gt_re.match(d.name):
                gts[_ISIC_SPLIT[m.group(1).lower()]] = d
        if imgs:
            return base, imgs, gts
    return None


def _find_ph2(root: Path) -> Path | None:
    for cand in (root / _PH2_DIR, *(d / _PH2_DIR for d in _subdirs(root))):
        if cand.is_dir():
            return cand
    if root.name == _PH2_DIR or any(re.fullmatch(r"IMD\d+", d.name) for d in _subdirs(root)):
        return root
    return None


def _has_pair(d: Path) -> bool:
    return (d / "images").is_dir() and (d / "masks").is_dir()


def detect_layout(root: str | Path) -> Layout:
    """Recognise the folder layout under ``root``; raises :class:`DataError` listing what was tried."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    for name in ("isic2017", "isic2018"):
        if found := _find_isic(root, name):
            base, imgs, gts = found
            year = name[-4:]
            return Layout(
                name,
                base,
                f"official ISIC {year} download",
                tuple(s for s in SPLITS if s in imgs and s in gts),
            )
    if (ph2 := _find_ph2(root)) is not None:
        return Layout("ph2", ph2, "PH2 (IMDnnn case folders)")
    if _has_pair(root / "train") and _has_pair(root / "val"):
        splits = ("train", "val", "test") if _has_pair(root / "test") else ("train", "test")
        return Layout(
            "prepared", root, "authors' prepared layout (train/, val/ with images/, masks/)", splits
        )
    if _has_pair(root):
        return Layout("flat", root, "flat images/ + masks/")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:15]) + (
        f", ... ({len(entries)} entries)" if len(entries) > 15 else ""
    )
    raise DataError(
        f"{root}: no known dataset layout. Tried: official ISIC 2017 (ISIC-2017_*_Data + "
        "ISIC-2017_*_Part1_GroundTruth), ISIC 2018 (ISIC2018_Task1-2_*_Input + "
        f"ISIC2018_Task1_*_GroundTruth), PH2 ('{_PH2_DIR}/IMDnnn/'), prepared (train/images, "
        "train/masks, val/images, val/masks), flat (images/ + masks/). "
        f"Found: {shown or 'an empty folder'}"
    )


def _pair_folder(
    img_dir: Path,
    mask_dir: Path,
    mask_suffix: str | None,
    split: str | None,
    problems: list[Problem],
) -> list[Sample]:
    """Pair ``img_dir/ID.*`` with ``mask_dir/ID<suffix>.*`` by ID."""
    images = _image_files(img_dir)
    masks = _image_files(mask_dir)
    if not images:
        problems.append(
            Problem(img_dir, "empty", f"holds no image files ({', '.join(IMAGE_EXTS)})")
        )
        return []
    if not masks:
        problems.append(Problem(mask_dir, "empty", "holds no mask files"))
    by_id: dict[str, Path] = {}
    for p in images:
        if p.stem in by_id:
            problems.append(
                Problem(p, "duplicate", f"duplicate ID {p.stem!r}: also {by_id[p.stem]}")
            )
            continue
        by_id[p.stem] = p
    mask_stems: dict[str, Path] = {}
    for p in masks:
        if p.stem in mask_stems:
            problems.append(
                Problem(p, "duplicate", f"duplicate mask {p.stem!r}: also {mask_stems[p.stem]}")
            )
            continue
        mask_stems[p.stem] = p
    if mask_suffix is None:  # pick the suffix that pairs the most images
        mask_suffix = max(MASK_SUFFIXES, key=lambda s: sum(f"{i}{s}" in mask_stems for i in by_id))
    out, used = [], set()
    for sid, img in by_id.items():
        m = mask_stems.get(f"{sid}{mask_suffix}")
        if m is None:
            problems.append(
                Problem(img, "missing_mask", f"no mask {sid}{mask_suffix}.png in {mask_dir}")
            )
        else:
            used.add(m.stem)
        out.append(Sample(sid, img, m, split))
    for stem, m in mask_stems.items():
        if stem not in used:
            problems.append(
                Problem(m, "orphan_mask", f"mask without an image in {img_dir}", "warning")
            )
    return out


def _index_isic(layout: Layout, mask_suffix: str | None, problems: list[Problem]) -> list[Sample]:
    _, imgs, gts = _find_isic(layout.base, layout.name)  # type: ignore[misc]
    out = []
    for split in SPLITS:
        if split not in imgs:
            continue
        if split not in gts:
            n = len(_image_files(imgs[split]))
            problems.append(
                Problem(
                    imgs[split],
                    "no_ground_truth",
                    f"no ground-truth folder for the {split} split: its {n} images are not used",
                    "warning",
                )
            )
            continue
        out += _pair_folder(
            imgs[split],
            gts[split],
            "_segmentation" if mask_suffix is None else mask_suffix,
            split,
            problems,
        )
    return out


def _index_ph2(layout: Layout, problems: list[Problem]) -> list[Sample]:
    out = []
    cases = [d for d in _subdirs(layout.base) if re.fullmatch(r"IMD\d+", d.name)]
    if not cases:
        problems.append(Problem(layout.base, "empty", "holds no IMDnnn case folders"))
    for case in cases:
        sid = case.name
        img = _first_image(case / f"{sid}_Dermoscopic_Image", sid)
        mask = _first_image(case / f"{sid}_lesion", f"{sid}_lesion")
        if img is None:
            problems.append(Problem(case, "missing_image", f"no {sid}_Dermoscopic_Image/{sid}.bmp"))
            continue
        if mask is None:
            problems.append(Problem(img, "missing_mask", f"no {sid}_lesion/{sid}_lesion.bmp"))
        out.append(Sample(sid, img, mask))
    return out


def _first_image(folder: Path, stem: str) -> Path | None:
    if not folder.is_dir():
        return None
    return next((p for p in _image_files(folder) if p.stem == stem), None)


def index_dataset(
    root: str | Path,
    *,
    mask_suffix: str | None = None,
    layout: Layout | None = None,
    strict: bool = True,
    skip_missing: bool = False,
) -> DatasetIndex:
    """Pair every image under ``root`` with its mask by ID.

    ``mask_suffix``: what follows the ID in mask file names (flat / prepared layouts;
    ``None`` tries ``""``, ``_segmentation``, ``_mask``, ...). ``strict`` raises
    :class:`DataError` on any error-level problem (missing mask, duplicate ID, empty
    folder); warnings (orphan masks, splits without ground truth) are issued as
    :class:`DataWarning`. ``skip_missing`` drops images without a mask, with a warning.
    """
    root = Path(root)
    layout = layout or detect_layout(root)
    problems: list[Problem] = []
    if layout.name in ("isic2017", "isic2018"):
        samples = _index_isic(layout, mask_suffix, problems)
    elif layout.name == "ph2":
        samples = _index_ph2(layout, problems)
    elif layout.name == "prepared":
        # The authors' "val" folder is their 30% test part; a test/ folder, if any, is the test.
        folders = (
            {"train": "train", "val": "val", "test": "test"}
            if "val" in layout.official_splits
            else {"train": "train", "test": "val"}
        )
        samples = []
        for split, folder in folders.items():
            d = layout.base / folder
            samples += _pair_folder(d / "images", d / "masks", mask_suffix, split, problems)
    else:
        samples = _pair_folder(
            layout.base / "images", layout.base / "masks", mask_suffix, None, problems
        )
    # The same ID in two splits / folders.
    seen: dict[str, Sample] = {}
    for s in samples:
        if s.id in seen:
            problems.append(
                Problem(s.image, "duplicate", f"duplicate ID {s.id!r}: also {seen[s.id].image}")
            )
        else:
            seen[s.id] = s
    if skip_missing:
        for i, p in enumerate(problems):
            if p.kind == "missing_mask":
                problems[i] = Problem(p.path, p.kind, p.message + " (skipped)", "warning")
        seen = {k: v for k, v in seen.items() if v.mask is not None}
    samples = sorted(seen.values(), key=lambda s: s.id)
    if not samples and not any(p.severity == "error" for p in problems):
        problems.append(
            Problem(layout.base, "empty", f"no image/mask pairs found ({layout.description})")
        )
    index = DatasetIndex(root, layout, samples, problems)
    if strict:
        _raise_or_warn(problems)
    return index


def _raise_or_warn(problems: Sequence[Problem], limit: int = 20) -> None:
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity == "warning":
            warnings.warn(str(p), DataWarning, stacklevel=3)
    if errors:
        lines = [str(p) for p in errors[:limit]]
        if len(errors) > limit:
            lines.append(f"... and {len(errors) - limit} more (run `segbench data check`)")
        raise DataError(f"{len(errors)} dataset problem(s):\n  " + "\n  ".join(lines))


# ----------------------------------------------------------------------------- decoding


def _open_image(
    path: Path, draft_size: int | None, notes: list[Problem]
) -> tuple[Image.Image, tuple[int, int]]:
    """The image in RGB and its original ``(W, H)``; JPEGs drafted down towards ``draft_size``."""
    try:
        im = Image.open(path)
        orig_wh = im.size
        if draft_size and im.format == "JPEG":
            # Let libjpeg decode at a reduced DCT scale (1/2, 1/4, 1/8) that still leaves
            # both sides >= the target: several times faster on large ISIC images.
            im.draft("RGB", (draft_size, draft_size))
        im.load()
    except (
        Exception
    ) as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"{path}: cannot decode image ({err})") from None
    if im.mode != "RGB":
        notes.append(
            Problem(path, "converted", f"image mode {im.mode} converted to RGB", "warning")
        )
        im = im.convert("RGB")
    return im, orig_wh


def _open_mask(
    path: Path, image_size: tuple[int, int], binarize: bool, notes: list[Problem]
) -> np.ndarray:
    """The mask as uint8 {0, 1} at full resolution; checks size and values."""
    try:
        m = Image.open(path)
        m.load()
    except Exception as err:
        raise DataError(f"{path}: cannot decode mask ({err})") from None
    if m.size != image_size:
        raise DataError(
            f"{path}: mask is {m.size[0]}x{m.size[1]} but its image is "
            f"{image_size[0]}x{image_size[1]} (WxH)"
        )
    if m.mode not in ("L", "1"):
        arr = np.asarray(m)
        if (
            arr.ndim == 3
            and arr.shape[2] >= 3
            and not (
                np.array_equal(arr[..., 0], arr[..., 1])
                and np.array_equal(arr[..., 0], arr[..., 2])
            )
        ):
            raise DataError(f"{path}: mask is colour ({m.mode}) with differing channels")
        notes.append(
            Problem(path, "converted", f"mask mode {m.mode} converted to grayscale", "warning")
        )
        arr = arr[..., 0] if arr.ndim == 3 else arr
    else:
        arr = np.asarray(m.convert("L"))
    counts = np.bincount(arr.ravel(), minlength=256)
    values = np.flatnonzero(counts)
    if not set(values.tolist()) <= {0, 255}:
        if not binarize:
            shown = ", ".join(str(v) for v in values[:12]) + (" ..." if len(values) > 12 else "")
            raise DataError(
                f"{path}: mask values are not 0/255 (found {len(values)} values: {shown}); "
                "pass binarize=True (--binarize) to threshold at 128"
            )
        notes.append(
            Problem(path, "binarized", f"mask values {values[:8].tolist()} binarised", "warning")
        )
        if values.max() <= 1:  # a 0/1 mask: thresholding at 128 would empty it
            return (arr > 0).astype(np.uint8)
        return (arr >= 128).astype(np.uint8)
    return (arr > 127).astype(np.uint8)


def load_pair(
    sample: Sample, size: int | None, *, binarize: bool = False, notes: list[Problem] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray]:
    """Decode one sample: ``(image HxWx3 uint8, mask HxW {0,1}, (orig_h, orig_w), orig_mask)``.

    With ``size`` the image is resized to ``size x size`` bilinearly (antialiased: PIL
    widens the filter when shrinking, i.e. area-like) and the mask by nearest neighbour;
    ``size=None`` keeps the original resolution. Raises :class:`DataError` naming the file.
    """
    notes = [] if notes is None else notes
    if sample.mask is None:
        raise DataError(f"{sample.image}: no mask")
    im, orig_wh = _open_image(sample.image, size, notes)
    mask = _open_mask(sample.mask, orig_wh, binarize, notes)
    if size is None:
        return np.asarray(im), mask, (orig_wh[1], orig_wh[0]), mask
    img = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))
    small = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return img, small, (orig_wh[1], orig_wh[0]), mask


def _decode_job(args: tuple[Sample, int | None, bool, bool]) -> dict[str, Any]:
    """Worker for the cache build and the checker; never raises (errors come back as data)."""
    sample, size, binarize, keep_orig = args
    notes: list[Problem] = []
    try:
        img, small, orig, full = load_pair(sample, size, binarize=binarize, notes=notes)
    except DataError as err:
        return {"error": str(err), "path": str(_culprit(sample, str(err))), "notes": notes}
    out: dict[str, Any] = {"notes": notes, "orig": orig, "fg": float(full.mean())}
    if size is not None:
        out["image"], out["mask"] = img, small
    if keep_orig:
        out["orig_mask"] = np.packbits(full.ravel())
    return out


def _culprit(sample: Sample, message: str) -> Path:
    if sample.mask is not None and message.startswith(str(sample.mask)):
        return sample.mask
    return sample.image


# ----------------------------------------------------------------------------- splits


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


# ----------------------------------------------------------------------------- cache


def _writable(folder: Path) -> bool:
    """Writable, and not marked read-only: root may write anywhere, but a dataset folder
    with no write bits (shared reference data) is meant to be left untouched."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def default_cache_root(root: Path) -> Path:
    """``<root>/.segbench-cache`` when writable, else ``$XDG_CACHE_HOME/segbench``
    (``~/.cache/segbench``)."""
    if _writable(root):
        return root / ".segbench-cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segbench"


def default_split_file(root: Path, name: str, cache_root: Path | None = None) -> Path:
    """``<root>/split.json`` when it exists or ``root`` is writable; else a file in the
    cache root named after the dataset and its path (two read-only copies never share one)."""
    root = Path(root)
    if (root / "split.json").is_file() or _writable(root):
        return root / "split.json"
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return (cache_root or default_cache_root(root)) / f"{name}-{tag}-split.json"


def _dataset_name(layout: Layout, root: Path) -> str:
    if layout.name in ("isic2017", "isic2018", "ph2"):
        return layout.name
    return re.sub(r"[^a-z0-9]+", "-", root.resolve().name.lower()).strip("-") or "dataset"


def _file_entries(samples: Sequence[Sample], root: Path) -> list[tuple]:
    out = []
    for s in samples:
        row: list[Any] = [s.id]
        for p in (s.image, s.mask):
            st = p.stat()  # type: ignore[union-attr]
            row += [os.path.relpath(p, root), st.st_size, st.st_mtime_ns]
        out.append(tuple(row))
    return out


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class PreparedData:
    """A dataset with a fixed split and a built preprocessing cache (see :func:`prepare_data`).

    Cached images are stored channels-first (``N, 3, H, W``) so batches need no
    transpose; :meth:`images` shows them as ``N, H, W, 3``.
    """

    def __init__(
        self,
        root: Path,
        name: str,
        layout: Layout,
        size: int,
        split_ids: dict[str, list[str]],
        fingerprint: str,
        split_file: Path,
        cache_path: Path,
        index: DatasetIndex,
        binarize: bool,
    ) -> None:
        self.root, self.name, self.layout, self.size = root, name, layout, size
        self.split_ids, self.fingerprint, self.split_file = split_ids, fingerprint, split_file
        self.cache_path, self.index, self.binarize = cache_path, index, binarize
        self._meta = read_json(cache_path / "meta.json")
        self._datasets: dict[str, CachedDataset] = {}
        self._orig: dict[str, Any] = {}
        self._by_id: dict[str, Sample] | None = None

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self.split_ids.items())
        return f"PreparedData({self.name!r}, {self.layout.name}, size={self.size}, {counts})"

    def _check_split(self, split: str) -> None:
        if split not in self.split_ids:
            raise KeyError(f"split {split!r}: choose one of {', '.join(self.split_ids)}")

    def dataset(self, split: str) -> CachedDataset:
        """A torch Dataset of ``(image uint8 3xHxW, mask uint8 1xHxW, index)`` from the cache."""
        self._check_split(split)
        if split not in self._datasets:
            self._datasets[split] = CachedDataset(
                self.cache_path / f"{split}_images.npy", self.cache_path / f"{split}_masks.npy"
            )
        return self._datasets[split]

    def images(self, split: str) -> np.ndarray:
        """``(N, size, size, 3)`` uint8, memory-mapped (a view), in ``split_ids[split]`` order."""
        return self.dataset(split).arrays()[0].transpose(0, 2, 3, 1)

    def masks(self, split: str) -> np.ndarray:
        """``(N, size, size)`` uint8 in {0, 1}, memory-mapped."""
        return self.dataset(split).arrays()[1]

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split in memory: images ``(N, 3, H, W)`` and masks ``(N, 1, H, W)``,
        uint8 tensors (one copy out of the cache, already channels-first)."""
        imgs, msks = self.dataset(split).arrays()
        return torch.from_numpy(np.array(imgs)), torch.from_numpy(np.array(msks)).unsqueeze(1)

    def ids(self, split: str) -> list[str]:
        self._check_split(split)
        return self.split_ids[split]

    def original_size(self, split: str, i: int) -> tuple[int, int]:
        """``(H, W)`` of sample ``i`` of ``split`` before resizing."""
        self._check_split(split)
        h, w = self._meta["original_sizes"][split][i]
        return int(h), int(w)

    def original_mask(self, split: str, i: int) -> np.ndarray:
        """The full-resolution mask (H, W) uint8 {0, 1}: cached for val/test, decoded for train."""
        self._check_split(split)
        h, w = self.original_size(split, i)
        path = self.cache_path / f"{split}_orig_masks.npz"
        if path.is_file():
            if split not in self._orig:
                self._orig[split] = np.load(path)
            bits = self._orig[split][self.split_ids[split][i]]
            return np.unpackbits(bits, count=h * w).reshape(h, w)
        return load_pair(self.sample(split, i), None, binarize=self.binarize)[1]

    def sample(self, split: str, i: int) -> Sample:
        """The source files of sample ``i`` of ``split``."""
        if self._by_id is None:
            self._by_id = self.index.by_id()
        return self._by_id[self.ids(split)[i]]

    def file_dataset(self, split: str) -> FileDataset:
        """The same items decoded from the image files each time (for comparison / no cache)."""
        return FileDataset(
            [self.sample(split, i) for i in range(len(self.ids(split)))], self.size, self.binarize
        )

    def batches(
        self,
        split: str,
        batch_size: int = 8,
        *,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
        **augment_kw: Any,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches ``(images uint8 Bx3xHxW, masks uint8 Bx1xHxW, indices)`` read straight from
        the memory map in this process, optionally shuffled (by ``generator``) and augmented
        on ``device`` (so on the GPU when training there).

        One fancy-indexed read per batch and no worker processes: with the augmentation on
        the GPU this is all the loading a training step needs.
        """
        ds = self.dataset(split)
        order = torch.randperm(len(ds), generator=generator) if shuffle else torch.arange(len(ds))
        stop = len(ds) - len(ds) % batch_size if drop_last else len(ds)
        dev = torch.device(device)
        for s in range(0, stop, batch_size):
            idx = order[s : s + batch_size]
            x, y = ds.get_batch(idx)
            if dev.type == "cuda":
                x = x.pin_memory().to(dev, non_blocking=True)
                y = y.pin_memory().to(dev, non_blocking=True)
            if augment:
                x, y = augment_batch(x, y, generator, **augment_kw)
            yield x, y, idx

    def loader(
        self,
        split: str,
        batch_size: int = 8,
        *,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        workers: int = 2,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> torch.utils.data.DataLoader:
        """A DataLoader of whole batches ``(images, masks, indices)`` read (and, with
        ``augment``, augmented on the CPU) by ``workers`` processes; seeded by ``seed``."""
        ds = self.dataset(split)
        gen = torch.Generator().manual_seed(seed)
        base = torch.utils.data.RandomSampler(ds, generator=gen) if shuffle else range(len(ds))
        sampler = torch.utils.data.BatchSampler(base, batch_size, drop_last)
        return torch.utils.data.DataLoader(
            _BatchView(ds, augment),
            sampler=sampler,
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=pin_memory,
            generator=gen,
        )


class CachedDataset(torch.utils.data.Dataset):
    """Items from the cache's ``.npy`` files; the memory maps open lazily in each process."""

    def __init__(self, images_path: Path, masks_path: Path) -> None:
        self.images_path, self.masks_path = Path(images_path), Path(masks_path)
        self._imgs: np.ndarray | None = None
        self._msks: np.ndarray | None = None
        self._len = int(self.arrays()[0].shape[0])

    def __len__(self) -> int:
        return self._len

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The memory maps: images ``(N, 3, H, W)``, masks ``(N, H, W)``."""
        if self._imgs is None:
            self._imgs = np.load(self.images_path, mmap_mode="r")
            self._msks = np.load(self.masks_path, mmap_mode="r")
        return self._imgs, self._msks  # type: ignore[return-value]

    def __getstate__(self) -> dict[str, Any]:  # never pickle an open memory map (it would copy)
        return {**self.__dict__, "_imgs": None, "_msks": None}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if not -self._len <= i < self._len:
            raise IndexError(f"index {i} out of range for {self._len} items")
        imgs, msks = self.arrays()
        return (
            torch.from_numpy(np.array(imgs[i])),
            torch.from_numpy(np.array(msks[i]))[None],
            int(i) % self._len,
        )

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images Bx3xHxW, masks Bx1xHxW)`` uint8 for ``indices``, one read each."""
        imgs, msks = self.arrays()
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(imgs[idx]), torch.from_numpy(msks[idx]).unsqueeze(1)


class _BatchView(torch.utils.data.Dataset):
    """Indexed by a list of indices (a BatchSampler's output): one stacked batch per item."""

    def __init__(self, ds: CachedDataset, augment: bool) -> None:
        self.ds, self.augment = ds, augment

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = self.ds.get_batch(indices)
        if self.augment:  # the worker's torch RNG is seeded per worker by the DataLoader
            x, y = augment_batch(x, y)
        return x, y, torch.as_tensor(indices)


class FileDataset(torch.utils.data.Dataset):
    """Decodes and resizes from the image files on every access (no cache)."""

    def __init__(self, samples: Sequence[Sample], size: int, binarize: bool = False) -> None:
        self.samples, self.size, self.binarize = list(samples), size, binarize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        img, mask, _, _ = load_pair(self.samples[i], self.size, binarize=self.binarize)
        return (
            torch.from_numpy(img.transpose(2, 0, 1).copy()),
            torch.from_numpy(mask.copy())[None],
            i,
        )


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True, file=sys.stderr
    )


def _run_jobs(jobs: list, workers: int, desc: str, progress: bool) -> Iterator[dict[str, Any]]:
    """Results of ``_decode_job`` in job order, over ``workers`` processes, with a progress bar."""
    with _progress(len(jobs), desc, progress) as bar:
        if workers <= 1 or len(jobs) < 8:
            for job in jobs:
                yield _decode_job(job)
                bar.update()
            return
        chunk = max(1, min(16, len(jobs) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in pool.map(_decode_job, jobs, chunksize=chunk):
                yield res
                bar.update()


def _build_cache(
    final: Path,
    by_id: dict[str, Sample],
    split_ids: dict[str, list[str]],
    size: int,
    binarize: bool,
    workers: int,
    progress: bool,
    meta: dict[str, Any],
) -> None:
    """Decode, resize and write every split into a temp folder, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as the data
    try:
        t0 = time.perf_counter()
        problems: list[Problem] = []
        arrays, sizes, orig_masks = {}, {}, {}
        for split in SPLITS:
            n = len(split_ids.get(split, []))
            arrays[split] = (
                np.lib.format.open_memmap(
                    tmp / f"{split}_images.npy", "w+", np.uint8, (n, 3, size, size)
                ),
                np.lib.format.open_memmap(
                    tmp / f"{split}_masks.npy", "w+", np.uint8, (n, size, size)
                ),
            )
            sizes[split] = [(0, 0)] * n
            orig_masks[split] = {}
        # One pool (and one progress bar) for all splits.
        where = [
            (split, k, sid) for split in SPLITS for k, sid in enumerate(split_ids.get(split, []))
        ]
        jobs = [(by_id[sid], size, binarize, split in ("val", "test")) for split, _, sid in where]
        for (split, k, sid), res in zip(
            where, _run_jobs(jobs, workers, f"cache @{size}", progress)
        ):
            problems += res["notes"]
            if "error" in res:
                problems.append(
                    Problem(Path(res["path"]), "decode", res["error"].split(": ", 1)[-1])
                )
                continue
            imgs, msks = arrays[split]
            imgs[k] = res["image"].transpose(2, 0, 1)
            msks[k] = res["mask"]
            sizes[split][k] = res["orig"]
            if "orig_mask" in res:
                orig_masks[split][sid] = res["orig_mask"]
        for imgs, msks in arrays.values():
            imgs.flush()
            msks.flush()
        del arrays
        _raise_or_warn(problems)
        for split in ("val", "test"):
            np.savez(tmp / f"{split}_orig_masks.npz", **orig_masks[split])
        meta = {
            **meta,
            "original_sizes": sizes,
            "build_seconds": round(time.perf_counter() - t0, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(tmp / "meta.json", meta)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same cache first: use theirs
            if not (final / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare_data(
    root: str | Path,
    size: int = 256,
    split_file: str | Path | None = None,
    seed: int = 42,
    val_fraction: float = 0.1,
    test_fraction: float = 0.3,
    cache_dir: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    *,
    mask_suffix: str | None = None,
    binarize: bool = False,
    split_mode: str = "auto",
    name: str | None = None,
) -> PreparedData:
    """Index ``root``, fix its split and build (or reuse) the preprocessing cache.

    Split: the layout's official train/val/test when it has them (``split_mode="auto"``
    or ``"official"``), otherwise a seeded ``test_fraction`` test part and a
    ``val_fraction`` validation part of the rest (``"seeded"`` forces this, pooling
    everything as the papers' 7:3 did). It is written to ``split_file`` (default
    ``<root>/split.json``, or ``<cache root>/<name>-split.json`` when ``root`` is
    read-only) and reused from there, so every model sees the same images; ``seed``
    is the split seed, not the training seed.

    Cache: every image resized to ``size x size`` (bilinear, antialiased) and every mask
    (nearest, {0, 1}) in uint8 ``.npy`` files, with original sizes and the
    full-resolution val/test masks; keyed by the files (names, sizes, mtimes), the split,
    ``size`` and :data:`PREPROC_VERSION`, so any change rebuilds it. Built by ``workers``
    processes into a temp folder renamed into place (a half-built cache is never used).
    """
    root = Path(root)
    if size < 8:
        raise ValueError(f"size={size}: too small")
    index = index_dataset(root, mask_suffix=mask_suffix)
    layout = index.layout
    name = name or _dataset_name(layout, root)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root(root)
    split_file = Path(split_file) if split_file else default_split_file(root, name, cache_root)
    split_ids, _ = _resolve_split(index, split_file, seed, test_fraction, val_fraction, split_mode)
    by_id = index.by_id()
    files = _file_entries(index.samples, root)
    fingerprint = _sha({"files": [f[:3] + f[4:6] for f in files], "split": split_ids})[:16]
    key = _sha(
        {
            "version": PREPROC_VERSION,
            "size": size,
            "binarize": binarize,
            "files": files,
            "split": split_ids,
        }
    )[:16]
    cache_path = cache_root / f"{name}-{size}-{key}"
    if not (cache_path / "meta.json").is_file():
        meta = {
            "format": "segbench-cache/1",
            "version": PREPROC_VERSION,
            "dataset": str(root),
            "layout": layout.name,
            "size": size,
            "binarize": binarize,
            "fingerprint": fingerprint,
            "key": key,
            "split_ids": split_ids,
        }
        _build_cache(cache_path, by_id, split_ids, size, binarize, workers, progress, meta)
    return PreparedData(
        root, name, layout, size, split_ids, fingerprint, split_file, cache_path, index, binarize
    )


# ----------------------------------------------------------------------------- checks


def check_dataset(
    root: str | Path,
    *,
    mask_suffix: str | None = None,
    binarize: bool = False,
    workers: int = 2,
    progress: bool = False,
) -> list[Problem]:
    """Every problem under ``root`` in one pass: layout, pairing, decoding, sizes, mask values."""
    root = Path(root)
    try:
        index = index_dataset(root, mask_suffix=mask_suffix, strict=False)
    except DataError as err:
        return [Problem(root, "layout", str(err).split(": ", 1)[-1])]
    problems = list(index.problems)
    jobs = [(s, None, binarize, False) for s in index.samples if s.mask is not None]
    for res in _run_jobs(jobs, workers, "check", progress):
        problems += res["notes"]
        if "error" in res:
            problems.append(Problem(Path(res["path"]), "decode", res["error"].split(": ", 1)[-1]))
    return problems


# ----------------------------------------------------------------------------- CLI


def _add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="dataset folder (any supported layout)")
    p.add_argument(
        "--mask-suffix",
        default=None,
        help="what follows the ID in mask names (flat/prepared; default: auto)",
    )


def _add_split(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="test part (default 0.3, 7:3)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="validation part carved from train (default 0.1)",
    )
    p.add_argument(
        "--split-mode",
        choices=("auto", "official", "seeded"),
        default="auto",
        help="official split when the layout has one (auto), or always seeded",
    )


def _cmd_info(args: argparse.Namespace) -> int:
    index = index_dataset(args.root, mask_suffix=args.mask_suffix)
    lay = index.layout
    print(f"dataset   {args.root}")
    print(f"layout    {lay.name}: {lay.description} (in {lay.base})")
    official = index.official_split_ids()
    counts = ", ".join(f"{k} {len(v)}" for k, v in official.items()) if official else "none"
    print(f"pairs     {len(index)}   official splits: {counts}")
    jobs = [(s, None, args.binarize, False) for s in index.samples]
    rows = []
    for s, res in zip(index.samples, _run_jobs(jobs, args.workers, "info", not args.quiet)):
        if "error" in res:
            print(f"  error: {res['error']}", file=sys.stderr)
            continue
        rows.append((s.id, *res["orig"], res["fg"]))
    if rows:
        arr = np.array([r[1:] for r in rows], dtype=float)
        print(
            f"size HxW  min {int(arr[:, 0].min())}x{int(arr[:, 1].min())}, "
            f"max {int(arr[:, 0].max())}x{int(arr[:, 1].max())}, "
            f"median {int(np.median(arr[:, 0]))}x{int(np.median(arr[:, 1]))}"
        )
        fg = arr[:, 2]
        print(
            f"lesion    fraction of pixels: mean {fg.mean():.3f}, median {np.median(fg):.3f}, "
            f"min {fg.min():.3f}, max {fg.max():.3f}; empty masks: {int((fg == 0).sum())}"
        )
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    index = index_dataset(args.root, mask_suffix=args.mask_suffix)
    out = args.out or default_split_file(args.root, _dataset_name(index.layout, args.root))
    if out.exists() and not args.force:
        print(f"{out} exists (use --force to replace it)", file=sys.stderr)
        return 1
    if args.force:
        out.unlink(missing_ok=True)
    split, meta = _resolve_split(
        index, out, args.seed, args.test_fraction, args.val_fraction, args.split_mode
    )
    print(
        f"{meta['source']} split -> {out}: " + ", ".join(f"{k} {len(v)}" for k, v in split.items())
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    problems = check_dataset(
        args.root,
        mask_suffix=args.mask_suffix,
        binarize=args.binarize,
        workers=args.workers,
        progress=not args.quiet,
    )
    for p in problems:
        print(p)
    n_err = sum(p.severity == "error" for p in problems)
    print(f"{n_err} error(s), {len(problems) - n_err} warning(s) in {args.root}")
    return 1 if n_err else 0


def _cmd_cache(args: argparse.Namespace) -> int:
    data = prepare_data(
        args.root,
        args.size,
        args.split_file,
        args.seed,
        args.val_fraction,
        args.test_fraction,
        args.cache_dir,
        args.workers,
        not args.quiet,
        mask_suffix=args.mask_suffix,
        binarize=args.binarize,
        split_mode=args.split_mode,
    )
    print(
        f"{data!r}\ncache  {data.cache_path}\nsplit  {data.split_file}\n"
        f"fingerprint {data.fingerprint}"
    )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    size = tuple(args.size) if args.size else None
    out = make_synthetic(
        args.out,
        n=args.n,
        size=size,
        seed=args.seed,
        mask_suffix=args.mask_suffix,
        layout=args.layout,
        ext=args.ext,
    )
    print(f"wrote {args.n} synthetic lesions ({args.layout} layout) to {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from bench.env import environment

    if args.threads:
        torch.set_num_threads(args.threads)
    data = prepare_data(
        args.root,
        args.size,
        args.split_file,
        args.seed,
        cache_dir=args.cache_dir,
        workers=max(1, args.workers),
        progress=not args.quiet,
        mask_suffix=args.mask_suffix,
    )
    gen = torch.Generator().manual_seed(0)
    n_train = len(data.split_ids["train"])
    if n_train < args.batch:
        raise DataError(
            f"{args.root}: the train split has {n_train} images, fewer than one "
            f"batch of {args.batch}; pass a smaller --batch"
        )

    def timed(make_batches: Any, augment_here: bool) -> dict[str, float]:
        """Samples per wall second over ``args.seconds`` (after one warm-up batch, which
        covers worker start-up), and per CPU second of this process: on a shared machine
        the latter is about what one idle core would deliver (meaningful only when this
        process does all the work, i.e. without workers)."""
        n, t0, c0, warm = 0, 0.0, 0.0, False
        while True:
            for x, y, _ in make_batches():
                if augment_here:
                    x, y = augment_batch(x, y, gen)
                scale_images(x)
                if not warm:
                    warm, t0, c0 = True, time.perf_counter(), time.process_time()
                    continue
                n += len(x)
                if (wall := time.perf_counter() - t0) >= args.seconds:
                    cpu = time.process_time() - c0
                    return {
                        "samples_per_s": n / wall,
                        "samples_per_cpu_s": n / max(cpu, 1e-9),
                        "n": n,
                    }

    kw = {"shuffle": True, "drop_last": True}
    results = {"cache": timed(lambda: data.batches("train", args.batch, generator=gen, **kw), True)}
    if args.workers > 0:
        loader = data.loader("train", args.batch, augment=True, workers=args.workers, **kw)
        results[f"cache, {args.workers} workers"] = timed(lambda: iter(loader), False)
        del loader
    files = torch.utils.data.DataLoader(
        data.file_dataset("train"),
        batch_size=args.batch,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        **kw,
    )
    results[f"files, {args.workers} workers"] = timed(lambda: iter(files), True)
    load = os.getloadavg()
    print(
        f"{data.name}: train split ({len(data.split_ids['train'])} images), {args.size}x{args.size}, "
        f"batch {args.batch}, flips + rotation + scaling, {torch.get_num_threads()} torch "
        f"thread(s) per process, {args.seconds:g} s each; {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f}"
    )
    print(f"  {'source':22s} {'samples/s':>10s} {'per CPU-s':>10s}")
    for k, v in results.items():
        per_cpu = (
            f"{v['samples_per_cpu_s']:10.1f}"
            if "workers" not in k or args.workers == 0
            else f"{'-':>10s}"
        )
        print(f"  {k:22s} {v['samples_per_s']:10.1f} {per_cpu}")
    if args.out:
        write_json(
            args.out,
            {
                "command": " ".join(["segbench", *sys.argv[1:]]),
                "dataset": str(args.root),
                "size": args.size,
                "batch": args.batch,
                "seconds": args.seconds,
                "workers": args.workers,
                "torch_threads": torch.get_num_threads(),
                "samples_per_s": {k: v["samples_per_s"] for k, v in results.items()},
                "samples_per_cpu_s": {
                    k: v["samples_per_cpu_s"]
                    for k, v in results.items()
                    if "workers" not in k or args.workers == 0
                },
                "load_average": load,
                "environment": environment("cpu"),
            },
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``segbench data`` and its subcommands."""
    p = subparsers.add_parser(
        "data",
        help="datasets: layouts, splits, cache, checks, synthetic data",
        description="Inspect, split, check and cache segmentation datasets "
        "(official ISIC 2017/2018, PH2, the authors' prepared layout, flat "
        "images/ + masks/).",
    )
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        q.add_argument(
            "--binarize",
            action="store_true",
            help="threshold masks that are not 0/255 at 128 instead of failing",
        )

    q = sub.add_parser(
        "info",
        help="layout, counts per split, image sizes, lesion statistics",
        description="Print the layout, pair counts, image-size range and mask "
        "foreground statistics of a dataset.",
    )
    _add_root(q)
    common(q)
    q.set_defaults(func=_cmd_info)

    q = sub.add_parser(
        "split",
        help="write a split.json (official or seeded train/val/test)",
        description="Write the split every model will use: the layout's official "
        "split, or a seeded test part plus a validation part carved from train.",
    )
    _add_root(q)
    _add_split(q)
    q.add_argument(
        "--out",
        type=Path,
        default=None,
        help="split file (default ROOT/split.json; in ~/.cache/segbench when ROOT is read-only)",
    )
    q.add_argument("--force", action="store_true", help="replace an existing split file")
    q.set_defaults(func=_cmd_split)

    q = sub.add_parser(
        "check",
        help="list every problem in a dataset in one pass",
        description="Decode every image and mask and list all problems (corrupt "
        "files, size mismatches, missing masks, non-0/255 masks, duplicate IDs, "
        "grayscale/RGBA images). Exit code 1 when there are errors.",
    )
    _add_root(q)
    common(q)
    q.set_defaults(func=_cmd_check)

    q = sub.add_parser(
        "cache",
        help="build (or reuse) the preprocessing cache",
        description="Resize every image and mask once into memory-mapped uint8 "
        "arrays, keyed by the files, the split and the size.",
    )
    _add_root(q)
    _add_split(q)
    common(q)
    q.add_argument("--size", type=int, default=256, help="square target size (default 256)")
    q.add_argument(
        "--split-file",
        type=Path,
        default=None,
        help="default ROOT/split.json (in the cache folder when ROOT is read-only)",
    )
    q.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="default ROOT/.segbench-cache, or ~/.cache/segbench when ROOT is read-only",
    )
    q.set_defaults(func=_cmd_cache)

    q = sub.add_parser(
        "synth",
        help="write seeded synthetic lesion images with masks",
        description="Write lesion-like images (irregular blobs, skin texture, hairs) "
        "with 0/255 masks, for tests and demos.",
    )
    q.add_argument("out", type=Path, help="output folder")
    q.add_argument("--n", type=int, default=32, help="number of images (default 32)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="fixed size (default: varied)",
    )
    q.add_argument("--layout", choices=SYNTHETIC_LAYOUTS, default="flat")
    q.add_argument("--ext", default="jpg", help="image format (jpg or png)")
    q.add_argument("--mask-suffix", default="", help="appended to the ID in mask names (flat)")
    q.set_defaults(func=_cmd_synth)

    q = sub.add_parser(
        "bench",
        help="loader throughput: samples/s from the cache vs the files",
        description="Measure samples/s delivered with augmentation at SIZE, from the "
        "preprocessing cache and from decoding the image files.",
    )
    _add_root(q)
    q.add_argument("--size", type=int, default=256)
    q.add_argument("--batch", type=int, default=8)
    q.add_argument("--seconds", type=float, default=10.0, help="time per source (default 10)")
    q.add_argument("--seed", type=int, default=42, help="split seed")
    q.add_argument("--split-file", type=Path, default=None)
    q.add_argument("--cache-dir", type=Path, default=None)
    q.add_argument("--workers", type=int, default=2, help="loader / decoding processes (default 2)")
    q.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (default 1; 0 keeps torch's default)",
    )
    q.add_argument("--quiet", action="store_true")
    q.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    q.set_defaults(func=_cmd_bench)
