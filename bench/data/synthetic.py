"""Seeded synthetic skin-lesion images with masks, for tests and demos.

Each image is a skin-coloured background (smooth shading plus grain), an
irregular pigmented blob whose outline is a random Fourier series in polar
coordinates (the mask is exactly that blob), and a few dark hair-like curves
drawn over it (image only, as real hairs occlude the lesion but are not part of
it). Sizes vary unless a fixed ``size`` is given.

The same generator can write the folder layouts that :mod:`bench.data` reads
(flat, official ISIC 2017 / 2018, PH2, the authors' prepared layout), so tests
can build every layout from the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

__all__ = ["LAYOUTS", "lesion_sample", "make_synthetic"]

LAYOUTS = ("flat", "isic2017", "isic2018", "ph2", "prepared")


def lesion_sample(
    rng: np.random.Generator, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One lesion-like image (H, W, 3) uint8 and its mask (H, W) uint8 in {0, 255}."""
    if size is None:
        h = int(rng.integers(160, 241))
        w = int(round(h * rng.uniform(1.0, 1.5)))
    else:
        h, w = (int(s) for s in size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Skin: a base tone, low-frequency shading and fine grain.
    base = np.array([rng.uniform(185, 235), rng.uniform(135, 185), rng.uniform(115, 160)])
    shade = gaussian_filter(rng.standard_normal((h, w)), sigma=min(h, w) / 8)
    shade /= shade.std() + 1e-6
    grain = gaussian_filter(rng.standard_normal((h, w)), sigma=0.8)
    skin = base + (10 * shade + 5 * grain)[..., None]
    # Dermoscope vignette: darker towards the corners.
    rr = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    skin *= np.clip(1.15 - 0.35 * rr**2, 0.4, 1.0)[..., None]

    # Lesion: irregular outline r(theta) = r0 * (1 + sum_k a_k cos(k theta + phi_k)).
    cy = h / 2 + rng.uniform(-0.15, 0.15) * h
    cx = w / 2 + rng.uniform(-0.15, 0.15) * w
    r0 = rng.uniform(0.14, 0.32) * min(h, w)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.ones_like(theta)
    for k in range(2, 8):
        radius += rng.uniform(0, 0.3 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius *= r0
    dist = np.hypot(yy - cy, xx - cx)
    inside = radius - dist  # > 0 inside the lesion
    mask = inside > 0

    lesion_col = np.array([rng.uniform(70, 150), rng.uniform(40, 95), rng.uniform(25, 75)])
    depth = np.clip(inside / r0, 0, 1)[..., None]  # darker towards the centre
    mottle = gaussian_filter(rng.standard_normal((h, w)), sigma=2.5)
    mottle /= mottle.std() + 1e-6
    lesion = lesion_col * (1.1 - 0.4 * depth) + (12 * mottle)[..., None]
    # A soft edge a pixel or two wide, centred on the mask boundary.
    edge = np.clip(inside / rng.uniform(0.7, 2.0), -30, 30)
    alpha = (1 / (1 + np.exp(-edge)))[..., None]
    img = np.clip(alpha * lesion + (1 - alpha) * skin, 0, 255).astype(np.uint8)

    # Hairs: dark smooth curves across the image.
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 7))):
        p0 = rng.uniform([0, 0], [w, h])
        p2 = rng.uniform([0, 0], [w, h])
        p1 = (p0 + p2) / 2 + rng.normal(0, min(h, w) / 4, 2)
        t = np.linspace(0, 1, 40)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier
        tone = int(rng.integers(15, 70))
        draw.line(
            [tuple(p) for p in pts],
            fill=(tone, tone - tone // 4, tone // 2),
            width=int(rng.integers(1, 3)),
        )
    return np.asarray(pil), (mask.astype(np.uint8) * 255)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"quality": 92} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(arr).save(path, **kw)


def make_synthetic(
    root: str | Path,
    n: int = 32,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    mask_suffix: str = "",
    *,
    layout: str = "flat",
    ext: str = "jpg",
) -> Path:
    """Write ``n`` seeded synthetic lesions under ``root`` and return ``root``.

    ``size`` is ``(H, W)``; ``None`` (default) draws a different size per image.
    ``layout`` picks the folder structure:

    - ``flat``: ``images/ID.<ext>``, ``masks/ID<mask_suffix>.png``;
    - ``isic2017`` / ``isic2018``: the official download folders, split about
      60/10/30 into training / validation / test, with the non-image files the
      real downloads carry (superpixel PNGs, CSVs, a LICENSE txt);
    - ``ph2``: ``PH2 Dataset images/IMDnnn/...`` BMP files;
    - ``prepared``: the authors' ``train/{images,masks}``, ``val/{images,masks}``
      (their "val" is the 30% test part).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    if n < 1:
        raise ValueError(f"n={n}: need at least one image")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = ext.lstrip(".")
    # Split assignment for layouts that have splits: a fixed 60/10/30 pattern.
    parts = ["train" if i % 10 < 6 else "val" if i % 10 == 6 else "test" for i in range(n)]
    for i in range(n):
        img, mask = lesion_sample(rng, size)
        if layout == "flat":
            sid = f"SYN_{i:05d}"
            _save(img, root / "images" / f"{sid}.{ext}")
            _save(mask, root / "masks" / f"{sid}{mask_suffix}.png")
        elif layout in ("isic2017", "isic2018"):
            sid = f"ISIC_{i:07d}"
            word = {"train": "Training", "val": "Validation", "test": "Test"}[parts[i]]
            if layout == "isic2017":
                word = "Test_v2" if word == "Test" else word
                img_dir = root / f"ISIC-2017_{word}_Data"
                gt_dir = root / f"ISIC-2017_{word}_Part1_GroundTruth"
                # The 2017 image folders also hold superpixel maps, to be skipped.
                _save(np.zeros((8, 8, 3), np.uint8), img_dir / f"{sid}_superpixels.png")
                (img_dir / f"ISIC-2017_{word}_Data_metadata.csv").write_text("image_id,age\n")
            else:
                img_dir = root / f"ISIC2018_Task1-2_{word}_Input"
                gt_dir = root / f"ISIC2018_Task1_{word}_GroundTruth"
                for d in (img_dir, gt_dir):
                    d.mkdir(parents=True, exist_ok=True)
                    (d / "LICENSE.txt").write_text("CC-BY-NC\n")
                    (d / "ATTRIBUTION.txt").write_text("ISIC\n")
            _save(img, img_dir / f"{sid}.jpg")
            _save(mask, gt_dir / f"{sid}_segmentation.png")
        elif layout == "ph2":
            sid = f"IMD{i + 2:03d}"
            case = root / "PH2 Dataset images" / sid
            _save(img, case / f"{sid}_Dermoscopic_Image" / f"{sid}.bmp")
            _save(mask, case / f"{sid}_lesion" / f"{sid}_lesion.bmp")
        else:  # prepared
            sid = f"ISIC_{i:07d}"
            part = "val" if parts[i] == "test" else "train"
            _save(img, root / part / "images" / f"{sid}.{ext}")
            _save(mask, root / part / "masks" / f"{sid}{mask_suffix}.png")
    if layout == "ph2":
        (root / "PH2_dataset.txt").write_text("synthetic stand-in for PH2\n")
    return root
