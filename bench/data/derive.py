"""Derived dataset folders for cross-dataset checks: one split of a dataset, written in another official layout, optionally with a named photometric shift.

``segbench data derive --from ROOT --split test --layout ph2 --to DIR [--shift NAME]``
writes the chosen split's images and masks at their original resolution into ``DIR``
in the chosen layout, so ``segbench evaluate --split all`` scores them as an external
set, and ``DIR/derived.json`` records the command and everything needed to rebuild it
(results cite it). ``ROOT`` is never written to: when ``ROOT`` has no split file yet,
the split is made into ``DIR/source-split.json``.

Layouts (:data:`DERIVED_LAYOUTS`):

- ``ph2``: ``PH2 Dataset images/IMD<n>/IMD<n>_Dermoscopic_Image/IMD<n>.bmp`` and
  ``IMD<n>_lesion/IMD<n>_lesion.bmp`` (0/255). ``<n>`` is the digits of the source ID
  (``ISIC_0000123`` -> ``IMD0000123``), a running number when IDs have no unique digits;
  ``derived.json`` maps new IDs to source IDs.
- ``isic-val`` / ``isic-test``: an official ISIC 2017 validation / test download,
  ``ISIC-2017_Validation_Data/<id>.jpg`` + ``ISIC-2017_Validation_Part1_GroundTruth/
  <id>_segmentation.png`` (``Test_v2`` for test): a folder that holds only an official
  evaluation part.

Images are copied byte for byte where the format allows (no shift, same format); else
decoded and written losslessly (BMP for PH2, PNG otherwise), so the shift is the only
change. Shifts (:data:`SHIFTS`) are fixed, deterministic transforms of the 8-bit RGB
image, a stand-in for another scanner; masks are never changed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from bench.core.io import read_json, write_json
from bench.data.decode import load_pair
from bench.data.layouts import SPLITS, DataError, Sample, index_dataset

DERIVED_LAYOUTS = ("ph2", "isic-val", "isic-test")


@dataclass(frozen=True)
class Shift:
    """A named photometric shift of an 8-bit RGB image (H, W, 3)."""

    name: str
    description: str
    apply: Callable[[np.ndarray], np.ndarray]


def _gamma(img: np.ndarray) -> np.ndarray:
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** 1.5).astype(np.uint8)
    return lut[img]


def _colour_cast(img: np.ndarray) -> np.ndarray:
    gain = np.array([1.10, 1.00, 0.85])
    return np.clip(np.round(img.astype(np.float64) * gain), 0, 255).astype(np.uint8)


def _blur(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=2)))


def _dim(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img.astype(np.float64) * 0.7 + 20), 0, 255).astype(np.uint8)


SHIFTS: dict[str, Shift] = {
    s.name: s
    for s in (
        Shift("gamma", "gamma 1.5 on [0, 1] intensities (darker mid-tones)", _gamma),
        Shift(
            "colour-cast", "channel gains R x1.10, G x1.00, B x0.85 (a warmer camera)", _colour_cast
        ),
        Shift("blur", "Gaussian blur, radius 2 px at the original resolution (defocus)", _blur),
        Shift("dim", "x0.7 + 20 (lower contrast, lifted blacks: under-exposure)", _dim),
    )
}


def _isic_dirs(layout: str) -> tuple[str, str]:
    part = {"isic-val": "Validation", "isic-test": "Test_v2"}[layout]
    return f"ISIC-2017_{part}_Data", f"ISIC-2017_{part}_Part1_GroundTruth"


def _ph2_ids(ids: list[str]) -> dict[str, str]:
    """New PH2 case IDs (``IMD<digits>``) for the source IDs: source ID -> new ID."""
    digits = [m.group(1) if (m := re.search(r"(\d+)$", i)) else None for i in ids]
    if all(digits) and len(set(digits)) == len(ids):
        return {i: f"IMD{d}" for i, d in zip(ids, digits)}
    width = max(3, len(str(len(ids))))
    return {i: f"IMD{k + 1:0{width}d}" for k, i in enumerate(ids)}


def _split_ids(
    root: Path,
    index: Any,
    split: str,
    split_file: Path | None,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    split_mode: str,
    tmp: Path,
) -> tuple[list[str], dict[str, Any]]:
    """The IDs of ``split`` and where the split came from, never writing into ``root``."""
    from bench.data.cache import split_file_for
    from bench.data.layouts import dataset_name
    from bench.data.splits import resolve_split

    if split == "all":
        return list(index.ids), {"split_file": None}
    path = split_file or split_file_for(root, dataset_name(index.layout, root), index, split_mode)
    made = not path.is_file()
    if made:  # make it in the output folder: never write into the source
        path = tmp / "source-split.json"
    splits, meta = resolve_split(index, path, seed, test_fraction, val_fraction, split_mode)
    if not made:
        write_json(tmp / "source-split.json", meta)  # provenance: the split as used
    info = {
        "split_file": str(split_file or path) if not made else "source-split.json",
        "source": meta.get("source"),
        "seed": meta.get("seed"),
        "val_fraction": meta.get("val_fraction"),
        "test_fraction": meta.get("test_fraction"),
        "split_mode": split_mode,
    }
    return list(splits[split]), info


def derive_dataset(
    root: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    layout: str = "ph2",
    shift: str | None = None,
    split_file: str | Path | None = None,
    seed: int = 42,
    val_fraction: float = 0.1,
    test_fraction: float = 0.3,
    split_mode: str = "auto",
    force: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Write ``split`` of ``root`` into ``out`` in ``layout``; returns ``derived.json``'s content.

    ``split``: train / val / test of the dataset's split (as training made it: same split
    file and settings) or ``all``. Built in a temp folder beside ``out`` and renamed into
    place; an existing ``out`` is an error unless ``force`` (then replaced).
    """
    from bench.core.env import command_line, git_commit

    root, out = Path(root), Path(out)
    if layout not in DERIVED_LAYOUTS:
        raise ValueError(f"--layout {layout!r}: choose one of {', '.join(DERIVED_LAYOUTS)}")
    if shift is not None and shift not in SHIFTS:
        raise ValueError(f"--shift {shift!r}: choose one of {', '.join(SHIFTS)}")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"--split {split!r}: choose one of {', '.join((*SPLITS, 'all'))}")
    src, dst = root.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(f"--to {out}: must be outside the source folder {root} (and not hold it)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"--to {out}: exists and is not empty (--force replaces it)")
    index = index_dataset(root)
    by_id = index.by_id()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        ids, split_info = _split_ids(
            root,
            index,
            split,
            Path(split_file) if split_file else None,
            seed,
            val_fraction,
            test_fraction,
            split_mode,
            tmp,
        )
        if not ids:
            raise DataError(f"{root}: the {split} split is empty; nothing to derive")
        new_ids = _ph2_ids(ids) if layout == "ph2" else {i: i for i in ids}
        fn = SHIFTS[shift].apply if shift else None
        for sid in ids:
            _write_sample(by_id[sid], new_ids[sid], tmp, layout, fn)
        record = {
            "format": "segbench-derived/1",
            "source_root": str(root),
            "source_layout": index.layout.name,
            "split": split,
            "split_info": split_info,
            "layout": layout,
            "shift": {"name": shift, "description": SHIFTS[shift].description} if shift else None,
            "n_images": len(ids),
            "ids": {new_ids[i]: i for i in ids},
            "command": command if command is not None else command_line(),
            "git_commit": git_commit(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(tmp / "derived.json", record)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _write_sample(
    sample: Sample,
    new_id: str,
    base: Path,
    layout: str,
    shift: Callable[[np.ndarray], np.ndarray] | None,
) -> None:
    img, mask, _, _ = load_pair(sample, None)  # the same checks as training
    mask_img = Image.fromarray((mask > 0).astype(np.uint8) * 255)
    if layout == "ph2":
        case = base / "PH2 Dataset images" / new_id
        img_path = case / f"{new_id}_Dermoscopic_Image" / f"{new_id}.bmp"
        mask_path = case / f"{new_id}_lesion" / f"{new_id}_lesion.bmp"
    else:
        img_dir, gt_dir = _isic_dirs(layout)
        ext = sample.image.suffix.lower() if shift is None else ".png"
        img_path = base / img_dir / f"{new_id}{ext}"
        mask_path = base / gt_dir / f"{new_id}_segmentation.png"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    if shift is None and img_path.suffix == sample.image.suffix.lower():
        shutil.copyfile(sample.image, img_path)
    else:
        Image.fromarray(shift(img) if shift else img).save(img_path)
    mask_img.save(mask_path)


def read_derived(folder: str | Path) -> dict[str, Any] | None:
    """``derived.json`` of a derived folder, or None for any other folder."""
    path = Path(folder) / "derived.json"
    return read_json(path) if path.is_file() else None
