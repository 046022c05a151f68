"""Peak memory of a measurement: CPU peak RSS (kernel high-water mark or sampling) and freeing memory between configurations."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import torch


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _read_vmhwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_vmhwm() -> bool:
    # Writing "5" to clear_refs resets the kernel's peak-RSS counter (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _read_vmhwm() is not None


class PeakRSS:
    """Peak resident set size of this process inside a ``with`` block.

    ``method="auto"`` uses the Linux kernel high-water mark (exact) when it can be reset,
    else samples ``psutil`` RSS every ``interval_s`` seconds (``method="sample"``).
    """

    def __init__(self, method: str = "auto", interval_s: float = 0.005) -> None:
        if method not in ("auto", "sample", "kernel"):
            raise ValueError(f"method must be 'auto', 'sample' or 'kernel', got {method!r}")
        self._want, self._interval = method, interval_s
        self.method = ""
        self.start_bytes = self.peak_bytes = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def reset_peak(self) -> None:
        """Restart the peak from the current RSS, keeping ``start_bytes``: the peak then
        covers only what follows (the timed loop, not the warm-up's autotuning), while
        :attr:`delta_mb` still counts from the start of the block (before the model)."""
        with self._lock:
            if self._thread is None:
                _reset_vmhwm()
            self.peak_bytes = _rss_bytes()

    def __enter__(self) -> PeakRSS:
        self.start_bytes = self.peak_bytes = _rss_bytes()
        if self._want != "sample" and _reset_vmhwm():
            self.method = "kernel VmHWM reset via /proc/self/clear_refs"
        elif self._want == "kernel":
            raise OSError("cannot reset the kernel peak-RSS counter (/proc/self/clear_refs)")
        else:
            self.method = f"psutil RSS sampled every {self._interval * 1e3:g} ms"
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
        else:
            self.peak_bytes = max(self.peak_bytes, _read_vmhwm() or 0, _rss_bytes())

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def delta_mb(self) -> float:
        """Peak minus the RSS on entering the block (what the work inside added)."""
        return (self.peak_bytes - self.start_bytes) / 2**20


def _free_memory() -> None:
    """Free what the last configuration left: Python garbage, CUDA's cache, and the pages
    glibc's malloc keeps after ``free``.

    The last matters for ``rss_delta_mb``: glibc keeps freed heap pages resident (and
    raises its mmap threshold after large frees), so the next model in the same worker was
    built in memory that was already resident and its RSS grew by 0-1.8 MB for 24 M
    parameters (ResNet34-UNet: 98 MB of weights). Measured here (memory, not timing):
    building ResNet34-UNet a second time in one process added 72-82 MB of RSS without
    ``malloc_trim(0)``, 135 MB with it (the first build: 159-162 MB, one-time library state
    included). ``malloc_trim`` returns those pages to the kernel; a no-op off glibc."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    _malloc_trim()


def _malloc_trim() -> bool:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False


def rss_delta_check(delta_mb: float, weights_mb: float) -> str:
    """Why an RSS delta cannot be the model's memory ('' when it can): building a model
    makes its weights resident, so a delta under the weights' size means the memory was
    already resident (reused from an earlier configuration) and the row is not a
    measurement of this model's memory."""
    if not (weights_mb > 0) or not (delta_mb == delta_mb):  # unknown weights or NaN delta
        return ""
    if delta_mb < weights_mb:
        return (
            f"RSS delta not measured: {delta_mb:.1f} MB is below the weights' "
            f"{weights_mb:.1f} MB (memory reused from an earlier configuration)"
        )
    return ""
