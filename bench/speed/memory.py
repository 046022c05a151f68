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
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

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
        return (self.peak_bytes - self.start_bytes) / 2**20


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
