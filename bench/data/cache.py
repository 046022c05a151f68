"""The preprocessing cache: every image and mask resized once into memory-mapped uint8 arrays, keyed by the files, the split and the size; :func:`prepare_data` is the entry point."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.io import write_json
from bench.core.lock import DirLock
from bench.data.decode import run_decode_jobs
from bench.data.home import cache_home
from bench.data.layouts import (
    SPLITS,
    Problem,
    Sample,
    _raise_or_warn,
    dataset_name,
    index_dataset,
)
from bench.data.prepared import PreparedData
from bench.data.splits import resolve_split, split_source

#: Bump when decoding / resizing changes: every cache built before is then rebuilt.
PREPROC_VERSION = 2


def default_cache_root(root: Path | None = None) -> Path:
    """The preprocessing caches' folder: :func:`cache_home`, never the dataset folder.

    Data folders are read-only to segbench; a cache beside the data is opt-in, by
    passing ``cache_dir`` (``--cache-dir``) explicitly. Each cache's folder name holds
    the dataset name, the size and a key of the files and the split.
    """
    return cache_home()


def dataset_tag(root: Path, samples: Sequence[Sample]) -> str:
    """A key of the dataset's resolved path and content (IDs, file names, sizes)."""
    return _tag(Path(root), _file_entries(samples, Path(root)))


def _tag(root: Path, files: list[tuple]) -> str:
    return _sha({"path": str(root.resolve()), "files": [f[:3] + f[4:6] for f in files]})[:12]


def default_split_file(root: Path, name: str, tag: str, cache_root: Path | None = None) -> Path:
    """``<root>/split.json`` when the dataset ships one (it is read, never written); else
    ``<cache>/splits/<name>-<tag>.json`` with ``tag`` from :func:`dataset_tag`, so two
    copies or two versions of a dataset never share a split file. Writing the split
    beside the data is opt-in (``split_file=<root>/split.json``)."""
    root = Path(root)
    if (root / "split.json").is_file():
        return root / "split.json"
    return (cache_root or default_cache_root(root)) / "splits" / f"{name}-{tag}.json"


def split_file_for(
    root: Path,
    name: str,
    index: Any,
    split_mode: str = "auto",
    cache_root: Path | None = None,
) -> Path:
    """The default split file for ``split_mode``: :func:`default_split_file`, or, when the
    mode makes another kind of split than ``auto`` does on this folder (``seeded`` on an
    official download), the same name with ``-<mode>`` appended, so the two never share
    one file."""
    path = default_split_file(root, name, dataset_tag(root, index.samples), cache_root)
    if split_source(index, split_mode) != split_source(index, "auto"):
        path = path.with_name(f"{path.stem}-{split_mode}{path.suffix}")
    return path


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
    _check_free_space(final, sum(len(v) for v in split_ids.values()), size)
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
            for arr in arrays[split]:
                _reserve(arr)
            sizes[split] = [(0, 0)] * n
            orig_masks[split] = {}
        # One pool (and one progress bar) for all splits.
        where = [
            (split, k, sid) for split in SPLITS for k, sid in enumerate(split_ids.get(split, []))
        ]
        jobs = [(by_id[sid], size, binarize, split in ("val", "test")) for split, _, sid in where]
        for (split, k, sid), res in zip(
            where, run_decode_jobs(jobs, workers, f"cache @{size}", progress)
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


def _check_free_space(final: Path, n: int, size: int) -> None:
    """Refuse to start a cache build that cannot fit: ``n`` images at ``size`` px take
    4 bytes per pixel (RGB + mask) plus headers; the full-resolution val/test masks are
    small (bit-packed) and covered by a 10 % margin."""
    need = int(n * 4 * size * size * 1.1) + (1 << 20)
    free = shutil.disk_usage(final.parent).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"cannot build the preprocessing cache {final}: it needs about "
            f"{need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free on that disk (free space, "
            "or pass --cache-dir on another disk)",
        )


def _reserve(arr: np.memmap) -> None:
    """Allocate a memory-mapped array's file now: writing into a sparse mapping on a full
    disk kills the process with SIGBUS and no message; this turns it into an OSError
    naming the file."""
    path = Path(arr.filename)
    if not hasattr(os, "posix_fallocate") or path.stat().st_size == 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, path.stat().st_size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # a file system without fallocate: the free-space check must do
        raise OSError(err.errno, f"cannot write the preprocessing cache file {path}: "
                      f"{err.strerror}") from None  # fmt: skip
    finally:
        os.close(fd)


def _remove_dead_builds(final: Path) -> None:
    """Temp folders of builds of this cache that died (SIGKILL); only called by the lock's
    owner, so no live build of this cache can own one."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _identify(
    root: Path,
    split_file: str | Path | None,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    split_mode: str,
    cache_dir: str | Path | None,
    mask_suffix: str | None,
    name: str | None,
) -> tuple[Any, str, Path, list[tuple], Path, dict[str, list[str]], dict[str, Any], str]:
    """Index ``root`` and fix its split: what :func:`prepare_data` and
    :func:`data_identity` share (no cache is built here)."""
    index = index_dataset(root, mask_suffix=mask_suffix)
    name = name or dataset_name(index.layout, root)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root(root)
    files = _file_entries(index.samples, root)
    if not split_file:
        split_file = split_file_for(root, name, index, split_mode, cache_root)
    split_file = Path(split_file)
    split_ids, split_meta = resolve_split(
        index, split_file, seed, test_fraction, val_fraction, split_mode
    )
    # names and sizes of the files and the split, not the path or mtimes: a copy of a
    # dataset elsewhere has the same fingerprint, another dataset of the same name not
    fingerprint = _sha({"files": [f[:3] + f[4:6] for f in files], "split": split_ids})[:16]
    return index, name, cache_root, files, split_file, split_ids, split_meta, fingerprint


def data_identity(
    root: str | Path,
    *,
    split_file: str | Path | None = None,
    seed: int = 42,
    val_fraction: float = 0.1,
    test_fraction: float = 0.3,
    split_mode: str = "auto",
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The ``fingerprint``, ``split_hash`` and ``split_counts`` that :func:`prepare_data`
    would give ``root``, without building its cache (to compare a folder with a run's
    record cheaply), and its ``index`` and ``split_ids``."""
    ident = _identify(
        Path(root), split_file, seed, val_fraction, test_fraction, split_mode, cache_dir,
        None, None,
    )  # fmt: skip
    split_ids = ident[5]
    return {
        "fingerprint": ident[7],
        "split_hash": _sha(split_ids)[:16],
        "split_counts": {k: len(v) for k, v in split_ids.items()},
        "index": ident[0],
        "split_ids": split_ids,
        "cache_root": ident[2],
    }


def _cache_problem(path: Path, split_ids: dict[str, list[str]], size: int) -> str | None:
    """What is wrong with an existing cache folder (a file missing, unreadable or of the
    wrong shape), None when it is complete. A cache is only renamed into place once
    complete, so a problem here means it was damaged afterwards (a disk error, a
    truncated copy, a file deleted by hand)."""
    meta = path / "meta.json"
    if not meta.is_file():
        return f"{meta} is missing"
    try:
        json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{meta} is unreadable ({err})"
    for split in SPLITS:
        n = len(split_ids.get(split, []))
        for kind, shape in (("images", (n, 3, size, size)), ("masks", (n, size, size))):
            f = path / f"{split}_{kind}.npy"
            try:
                arr = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as err:
                return f"{f} is missing or truncated ({err})"
            if arr.shape != shape:
                return f"{f} holds {arr.shape}, expected {shape}"
    return None


def _cache_ok(path: Path, split_ids: dict[str, list[str]], size: int) -> bool:
    return path.is_dir() and _cache_problem(path, split_ids, size) is None


def _remove_damaged(path: Path, split_ids: dict[str, list[str]], size: int) -> None:
    """Move a damaged cache out of the way (named in a warning) so it is rebuilt."""
    if not path.exists():
        return
    import warnings

    why = _cache_problem(path, split_ids, size) or "incomplete"
    warnings.warn(f"damaged preprocessing cache: {why}; rebuilding {path}", stacklevel=3)
    shutil.rmtree(path, ignore_errors=True)


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
    everything as the papers' 7:3 did). It is written to ``split_file`` (default: a
    file in the cache folder keyed by the dataset's path and content, with a ``-seeded``
    suffix for a seeded split of an official download, see :func:`split_file_for`;
    ``<root>/split.json`` is read when the dataset ships one) and reused from there, so
    every model sees the same images; ``seed`` is the split seed, not the training seed.
    Nothing is written into ``root`` unless ``split_file`` or ``cache_dir`` point there.

    Cache: every image resized to ``size x size`` (bilinear, antialiased) and every mask
    (nearest, {0, 1}) in uint8 ``.npy`` files, with original sizes and the
    full-resolution val/test masks; keyed by the files (names, sizes, mtimes), the split,
    ``size`` and :data:`PREPROC_VERSION`, so any change rebuilds it. Built by ``workers``
    processes into a temp folder renamed into place (a half-built cache is never used);
    two processes asking for the same missing cache build it once: the second waits for
    the first's lock (``<cache>.lock``) and reuses its result.
    """
    root = Path(root)
    if size < 8:
        raise ValueError(f"size={size}: too small")
    index, name, cache_root, files, split_file, split_ids, split_meta, fingerprint = _identify(
        root, split_file, seed, val_fraction, test_fraction, split_mode, cache_dir, mask_suffix,
        name,
    )  # fmt: skip
    layout = index.layout
    by_id = index.by_id()
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
    if not _cache_ok(cache_path, split_ids, size):
        # One builder per cache: a second process waits for the first and then reuses its
        # cache (bench.core.lock; a builder that died leaves a stale lock, taken over).
        with DirLock(
            cache_root / f"{cache_path.name}.lock", "preprocessing cache", wait=math.inf,
            owned=cache_path,
        ):  # fmt: skip
            if not _cache_ok(cache_path, split_ids, size):  # not built while we waited
                _remove_dead_builds(cache_path)
                _remove_damaged(cache_path, split_ids, size)
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
    data = PreparedData(
        root, name, layout, size, split_ids, fingerprint, split_file, cache_path, index, binarize
    )
    data.split_hash = _sha(split_ids)[:16]
    data.duplicate_leaks = list((split_meta.get("duplicates") or {}).get("leaks", []))
    return data
