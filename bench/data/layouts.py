"""Datasets: folder layouts, splits, a preprocessing cache, augmentation, bad-input checks.

Flow: :func:`detect_layout` recognises a root folder, :func:`index_dataset` pairs
images with masks by ID, :func:`prepare_data` fixes the split (official, or a
seeded 7:3 + validation split stored in ``split.json``) and builds or reuses a
memory-mapped uint8 cache of every image and mask resized once, and
:class:`PreparedData` hands out arrays, torch datasets and augmented batches.

Augmentation and scaling live in :mod:`bench.data.augment`, synthetic lesions in
:mod:`bench.data.synthetic`; prepared datasets in :mod:`bench.data.prepared`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


SPLITS = ("train", "val", "test")


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


def _detect_isic(name: str) -> Callable[[Path], Layout | None]:
    def detect(root: Path) -> Layout | None:
        if found := _find_isic(root, name):
            base, imgs, gts = found
            splits = tuple(s for s in SPLITS if s in imgs and s in gts)
            return Layout(name, base, f"official ISIC {name[-4:]} download", splits)
        return None

    return detect


def _detect_ph2(root: Path) -> Layout | None:
    ph2 = _find_ph2(root)
    return None if ph2 is None else Layout("ph2", ph2, "PH2 (IMDnnn case folders)")


def _detect_prepared(root: Path) -> Layout | None:
    if not (_has_pair(root / "train") and _has_pair(root / "val")):
        return None
    splits = ("train", "val", "test") if _has_pair(root / "test") else ("train", "test")
    return Layout(
        "prepared", root, "authors' prepared layout (train/, val/ with images/, masks/)", splits
    )


def _detect_flat(root: Path) -> Layout | None:
    return Layout("flat", root, "flat images/ + masks/") if _has_pair(root) else None


@dataclass(frozen=True)
class LayoutSpec:
    """One dataset layout: how to recognise it, how to index it, and what to call it.

    Adding a layout is one entry in :data:`LAYOUT_SPECS` (detection order): the "Tried:"
    message of an unrecognised folder, :func:`index_dataset` and the dataset's name in
    results (:func:`dataset_name`) all read the table.
    """

    name: str
    #: what the layout looks like, for the "no known layout. Tried: ..." message
    looks_like: str
    detect: Callable[[Path], Layout | None]
    index: Callable[[Layout, str | None, list[Problem]], list[Sample]]
    #: results name a folder of this layout by the layout (e.g. "isic2017"), not by the
    #: folder's base name; False for generic layouts
    named_by_layout: bool = False


def detect_layout(root: str | Path) -> Layout:
    """Recognise the folder layout under ``root``; raises :class:`DataError` listing what was tried."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    for spec in LAYOUT_SPECS:
        if (layout := spec.detect(root)) is not None:
            return layout
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:15]) + (
        f", ... ({len(entries)} entries)" if len(entries) > 15 else ""
    )
    tried = ", ".join(spec.looks_like for spec in LAYOUT_SPECS)
    raise DataError(
        f"{root}: no known dataset layout. Tried: {tried}. Found: {shown or 'an empty folder'}"
    )


def layout_spec(name: str) -> LayoutSpec:
    """The table entry of layout ``name``."""
    for spec in LAYOUT_SPECS:
        if spec.name == name:
            return spec
    raise KeyError(f"layout {name!r}: choose one of {', '.join(LAYOUT_NAMES)}")


def dataset_name(layout: Layout, root: Path) -> str:
    """A dataset's name in results: the layout's name for official downloads, else the
    folder's name (lower case, ``-`` for characters other than letters and digits)."""
    if layout_spec(layout.name).named_by_layout:
        return layout.name
    # letters and digits of any script are kept (the rule of engine.config.dataset_label)
    return re.sub(r"[\W_]+", "-", Path(root).resolve().name.lower()).strip("-") or "dataset"


def _by_stem(paths: Sequence[Path], what: str, problems: list[Problem]) -> dict[str, Path]:
    """Stem -> file; a second file with the same stem (another extension) is a problem."""
    out: dict[str, Path] = {}
    for p in paths:
        if p.stem in out:
            problems.append(
                Problem(p, "duplicate", f"duplicate {what} {p.stem!r}: also {out[p.stem]}")
            )
            continue
        out[p.stem] = p
    return out


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
    by_id = _by_stem(images, "ID", problems)
    mask_stems = _by_stem(masks, "mask", problems)
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


def _index_prepared(
    layout: Layout, mask_suffix: str | None, problems: list[Problem]
) -> list[Sample]:
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
    return samples


def _index_flat(layout: Layout, mask_suffix: str | None, problems: list[Problem]) -> list[Sample]:
    return _pair_folder(layout.base / "images", layout.base / "masks", mask_suffix, None, problems)


def _index_ph2(layout: Layout, mask_suffix: str | None, problems: list[Problem]) -> list[Sample]:
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
    samples = layout_spec(layout.name).index(layout, mask_suffix, problems)
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


#: Every dataset layout, in detection order (official downloads before generic folders).
LAYOUT_SPECS: tuple[LayoutSpec, ...] = (
    LayoutSpec(
        "isic2017",
        "official ISIC 2017 (ISIC-2017_*_Data + ISIC-2017_*_Part1_GroundTruth)",
        _detect_isic("isic2017"),
        _index_isic,
        named_by_layout=True,
    ),
    LayoutSpec(
        "isic2018",
        "ISIC 2018 (ISIC2018_Task1-2_*_Input + ISIC2018_Task1_*_GroundTruth)",
        _detect_isic("isic2018"),
        _index_isic,
        named_by_layout=True,
    ),
    LayoutSpec("ph2", f"PH2 ('{_PH2_DIR}/IMDnnn/')", _detect_ph2, _index_ph2, named_by_layout=True),
    LayoutSpec(
        "prepared",
        "prepared (train/images, train/masks, val/images, val/masks)",
        _detect_prepared,
        _index_prepared,
    ),
    LayoutSpec("flat", "flat (images/ + masks/)", _detect_flat, _index_flat),
)

#: the layouts' names, in detection order
LAYOUT_NAMES = tuple(spec.name for spec in LAYOUT_SPECS)


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
