"""Duplicate images: exact copies (same decoded pixels) and near copies (perceptual hash).

ISIC 2017 holds byte-identical images under different IDs, some across its official
splits, and near copies (the same lesion re-photographed or re-encoded). A split that
puts two copies on opposite sides of train / test scores the model on an image it has
trained on. This module finds the copies, groups them, and says which groups a split
puts on more than one side.

Two hashes per image, both of the decoded RGB pixels (so a re-encoded file with the same
pixels is an exact copy, and file names or formats do not matter):

- ``pixel``: sha256 of the decoded array and its shape: equal only for identical pixels;
- ``phash``: the 256-bit DCT perceptual hash of ``imagehash.phash(hash_size=16)`` (16 x 16
  low frequencies of a 64 x 64 grey thumbnail, each bit above / below their median). Two
  images are near copies when the Hamming distance of their hashes is at most
  :data:`NEAR_THRESHOLD` bits.

How the threshold was chosen: on the 2,150 images of ``isic2017-256`` the pairwise
distances (2.3 M pairs) have 11 pairs below 40 bits, every one of them visibly the same
photograph (re-encoded, recoloured or slightly cropped; inspected side by side), then
rise steeply: 10 pairs at 40-47, 26 at 48-55, 132 at 56-63, where two different lesions
on plain skin first appear (56 bits). The 64-bit default hash separates worse (unrelated
small central lesions at 4 of 64 bits). 40 keeps every group a clean pair there; the
same lesion photographed twice with another framing (46-62 bits) is a separate
photograph and is not grouped. ``segbench data check --near-threshold`` changes it.

The hashes of a folder are cached under the preprocessing cache, keyed by the image
files' names, sizes and mtimes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.io import read_json, write_json
from bench.data.layouts import DataError, DatasetIndex, Sample

#: side of the pHash's DCT block: HASH_SIZE**2 bits (256)
HASH_SIZE = 16
#: largest pHash Hamming distance (bits of 256) at which two images count as near copies
NEAR_THRESHOLD = 40
#: version of the hash recipe: bump to invalidate cached hashes
HASH_VERSION = 2


@dataclass(frozen=True)
class ImageHash:
    """The two hashes of one image."""

    pixel: str  # sha256 hex of the decoded RGB pixels and their shape
    phash: int  # 256-bit perceptual hash

    def distance(self, other: ImageHash) -> int:
        """Hamming distance of the perceptual hashes (0-256)."""
        return int(bin(self.phash ^ other.phash).count("1"))


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are copies of each other (transitively)."""

    ids: tuple[str, ...]  # sorted
    kind: str  # "exact": all share one pixel hash; "near": linked by pHash distance
    max_distance: int  # largest pHash distance between linked members (0 for exact)

    def as_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "kind": self.kind, "max_distance": self.max_distance}


def hash_image_file(path: str | Path) -> ImageHash:
    """Both hashes of one image file (decoded to RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except Exception as err:  # PIL raises many kinds
        raise DataError(f"{path}: cannot decode image ({err})") from None
    return hash_pil(rgb)


def hash_pil(rgb: Any) -> ImageHash:
    """Both hashes of an RGB PIL image."""
    import imagehash

    arr = np.asarray(rgb, dtype=np.uint8)
    digest = hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()
    ph = imagehash.phash(rgb, hash_size=HASH_SIZE)
    return ImageHash(digest, int(str(ph), 16))


def _hash_job(path: str) -> tuple[str, int] | str:
    try:
        h = hash_image_file(path)
    except DataError as err:
        return str(err)
    return h.pixel, h.phash


def hash_samples(
    samples: Sequence[Sample],
    *,
    cache_file: Path | None = None,
    workers: int = 2,
    progress: bool = False,
) -> dict[str, ImageHash]:
    """``{id: ImageHash}`` of every sample's image, read from / written to ``cache_file``.

    The cache entry of an image is reused while its file name, size and mtime are the
    same. An image that cannot be decoded is left out of the result.
    """
    from bench.data.decode import _progress

    cached: dict[str, Any] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            data = read_json(cache_file)
            if data.get("version") == HASH_VERSION:
                cached = data.get("images", {})
        except (OSError, ValueError):
            cached = {}  # a damaged cache is rebuilt
    out: dict[str, ImageHash] = {}
    todo: list[tuple[str, str, str]] = []
    for s in samples:
        st = s.image.stat()
        key = f"{s.image.name}:{st.st_size}:{st.st_mtime_ns}"
        hit = cached.get(s.id)
        if hit and hit.get("key") == key:
            out[s.id] = ImageHash(hit["pixel"], int(hit["phash"], 16))
        else:
            todo.append((s.id, str(s.image), key))
    if todo:
        paths = [t[1] for t in todo]
        with _progress(len(todo), "hash", progress) as bar:
            if workers <= 1 or len(todo) < 16:
                results: Iterable[Any] = map(_hash_job, paths)
                results = list(_tick(results, bar))
            else:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    results = list(_tick(pool.map(_hash_job, paths, chunksize=16), bar))
        # an image that cannot be decoded is left out (it has no copies we could find):
        # the cache build and `segbench data check` report it with its path
        for (sid, _path, key), res in zip(todo, results, strict=True):
            if isinstance(res, str):
                continue
            pixel, ph = res
            out[sid] = ImageHash(pixel, ph)
            cached[sid] = {"key": key, "pixel": pixel, "phash": f"{ph:064x}"}
        if cache_file is not None:
            try:
                write_json(cache_file, {"version": HASH_VERSION, "images": cached})
            except OSError:
                pass  # the cache only saves time; the hashes are returned all the same
    return out


def _tick(results: Iterable[Any], bar: Any) -> Iterable[Any]:
    for r in results:
        bar.update()
        yield r


def group_duplicates(
    hashes: Mapping[str, ImageHash], threshold: int = NEAR_THRESHOLD
) -> list[DuplicateGroup]:
    """Groups of copies: equal pixel hashes, or pHash distance <= ``threshold``, linked
    transitively (union-find). Singletons are left out; groups sorted by first ID."""
    ids = sorted(hashes)
    parent = {i: i for i in ids}

    def find(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_pixel: dict[str, list[str]] = {}
    for i in ids:
        by_pixel.setdefault(hashes[i].pixel, []).append(i)
    for members in by_pixel.values():
        for m in members[1:]:
            union(members[0], m)
    link_dist: dict[frozenset[str], int] = {}
    if threshold >= 0 and len(ids) > 1:
        bits = _bits([hashes[i].phash for i in ids])
        for k in range(len(ids) - 1):
            d = _distances(bits[k + 1 :], bits[k])
            for j in np.nonzero(d <= threshold)[0]:
                a, b = ids[k], ids[k + 1 + int(j)]
                union(a, b)
                link_dist[frozenset((a, b))] = int(d[j])
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(find(i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        exact = len({hashes[m].pixel for m in members}) == 1
        dists = [d for pair, d in link_dist.items() if pair <= set(members)]
        out.append(
            DuplicateGroup(tuple(members), "exact" if exact else "near", 0 if exact else max(dists))
        )
    return sorted(out, key=lambda g: g.ids)


def _bits(values: Sequence[int]) -> np.ndarray:
    """``(N, HASH_SIZE**2 / 8)`` uint8: each hash's bytes (for vectorised distances)."""
    n = HASH_SIZE * HASH_SIZE // 8
    return np.frombuffer(b"".join(int(v).to_bytes(n, "big") for v in values), np.uint8).reshape(
        -1, n
    )


def _distances(bits: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Hamming distance of ``row`` (one hash's bytes) to every row of ``bits``."""
    return _POPCOUNT[np.bitwise_xor(bits, row)].sum(axis=1)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def find_duplicates(
    index: DatasetIndex,
    *,
    threshold: int = NEAR_THRESHOLD,
    cache_root: Path | None = None,
    workers: int = 2,
    progress: bool = False,
) -> tuple[list[DuplicateGroup], dict[str, ImageHash]]:
    """The duplicate groups of a dataset folder, and every image's hashes."""
    cache_file = None
    if cache_root is not None:
        tag = hashlib.sha256(str(Path(index.root).resolve()).encode()).hexdigest()[:12]
        cache_file = Path(cache_root) / "hashes" / f"{Path(index.root).name}-{tag}.json"
    hashes = hash_samples(index.samples, cache_file=cache_file, workers=workers, progress=progress)
    return group_duplicates(hashes, threshold), hashes


def straddling(
    groups: Sequence[DuplicateGroup], split: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """The groups whose members lie in more than one part of ``split``: each as
    ``{"ids", "kind", "max_distance", "parts": {id: part}}``. Members outside every part
    (e.g. an excluded official test part) are not counted."""
    part_of = {i: name for name, ids in split.items() for i in ids}
    out = []
    for g in groups:
        parts = {i: part_of[i] for i in g.ids if i in part_of}
        if len(set(parts.values())) > 1:
            out.append({**g.as_dict(), "parts": parts})
    return out


def leak_summary(leaks: Sequence[Mapping[str, Any]], limit: int = 5) -> str:
    """One line naming the leaking groups: ``ISIC_1 (train) = ISIC_2 (test) [exact]; ...``."""
    parts = []
    for g in leaks[:limit]:
        members = " = ".join(f"{i} ({p})" for i, p in sorted(g["parts"].items()))
        parts.append(f"{members} [{g['kind']}]")
    more = f"; and {len(leaks) - limit} more" if len(leaks) > limit else ""
    return "; ".join(parts) + more


def match_images(
    query: Mapping[str, ImageHash],
    reference: Mapping[str, ImageHash],
    *,
    threshold: int = NEAR_THRESHOLD,
) -> dict[str, dict[str, Any]]:
    """Images of ``query`` that are also in ``reference``: same ID, same pixels, or pHash
    distance <= ``threshold``. ``{query_id: {"match": ref_id, "by": "id"|"pixel"|"phash",
    "distance": int}}``."""
    out: dict[str, dict[str, Any]] = {}
    by_pixel = {h.pixel: i for i, h in reference.items()}
    ref_ids = sorted(reference)
    bits = _bits([reference[i].phash for i in ref_ids])
    for qid, qh in query.items():
        if qid in reference:
            out[qid] = {"match": qid, "by": "id", "distance": qh.distance(reference[qid])}
        elif qh.pixel in by_pixel:
            out[qid] = {"match": by_pixel[qh.pixel], "by": "pixel", "distance": 0}
        elif len(ref_ids) and threshold >= 0:
            d = _distances(bits, _bits([qh.phash])[0])
            j = int(np.argmin(d))
            if d[j] <= threshold:
                out[qid] = {"match": ref_ids[j], "by": "phash", "distance": int(d[j])}
    return out
