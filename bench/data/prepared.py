"""A prepared dataset (fixed split, built cache) and the torch datasets it hands out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.io import read_json
from bench.data.augment import augment_batch
from bench.data.decode import load_pair
from bench.data.layouts import DatasetIndex, Layout, Sample


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
        #: set by prepare_data: sha256 prefix of the split, and the duplicate-image groups
        #: it puts on more than one side (bench.data.duplicates; [] = leak-free)
        self.split_hash: str | None = None
        self.duplicate_leaks: list[dict[str, Any]] = []

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
