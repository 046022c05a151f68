"""The control parts of the training loop: stop requests (Ctrl-C, SIGTERM) and the
errors that end a run, how often the loss is checked, batching, the aux-output wrapper
and the epoch summary line. :mod:`bench.engine.trainer` holds the loop itself."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.engine import distributed as bdist

log = logging.getLogger("bench.engine.trainer")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal after saving its position (``signum``: SIGINT or
    SIGTERM); the same command resumes. A KeyboardInterrupt, so Ctrl-C handling is unchanged."""

    def __init__(self, signum: int, saved: Path | None) -> None:
        self.signum, self.saved = signum, saved
        name = signal.Signals(signum).name
        where = f"; saved {saved}, run the same command to resume" if saved else ""
        super().__init__(f"{name}{where}")


#: On CUDA (and under DDP) the loss is checked for NaN / inf, and a Ctrl-C agreed on
#: between ranks, every this many steps: each check reads a value back from the GPU (a
#: host sync that stalls the launch queue) and, under DDP, is one all-reduce. A single
#: CPU process has no sync to save and checks every step.
CHECK_EVERY = 25


class _StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM set a flag the loop checks between steps; a second
    signal aborts at once.

    SIGTERM is what Kubernetes, systemd and a plain ``scancel`` send: handled like Ctrl-C
    (finish the step, save ``last.pt``, exit with :data:`bench.core.exitcodes.TERMINATED`).
    Its handler is installed only where SIGTERM has the default action: under submitit
    (sweep cells) SIGTERM is deliberately ignored and the preemption signal checkpoints
    and requeues the job, so that path is left to submitit.
    """

    def __init__(self, quiet: bool) -> None:
        self.requested, self.quiet = False, quiet
        self.signum: int | None = None
        self._prev: dict[int, Any] = {}

    def _handler(self, signum: int, frame: types.FrameType | None) -> None:
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise TrainingStopped(signum, None)
        self.requested, self.signum = True, signum
        again = "Ctrl-C" if signum == signal.SIGINT else "send it again"
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step ({again} to "
            "abort now)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._prev[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler)
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                self._prev[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, prev in self._prev.items():
            signal.signal(signum, prev)
        self._prev = {}


class _StopNow(_StopRequest):
    """SIGINT / SIGTERM during the final test scoring: stop at once with a message (the
    training is complete and saved in ``last.pt``; scoring again is cheap, so nothing is
    saved mid-way). The same rule as :class:`_StopRequest` for SIGTERM under submitit."""

    def __init__(self, saved: Path) -> None:
        self.saved = saved
        self._prev: dict[int, Any] = {}

    def _handler(self, signum: int, frame: types.FrameType | None) -> None:
        print(
            f"\n{signal.Signals(signum).name} during the final test scoring: the training is "
            f"complete ({self.saved}); the same command scores it again",
            file=sys.stderr,
            flush=True,
        )
        raise TrainingStopped(signum, self.saved)


class _AuxForward(nn.Module):
    """``forward`` returning ``(logits, [aux...])`` so DDP sees the deep-supervision path."""

    def __init__(self, model: nn.Module, has_aux: bool) -> None:
        super().__init__()
        self.model, self.has_aux = model, has_aux

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.has_aux:
            return self.model.forward_aux(x)
        return self.model(x), []


def _check_every(device: str, distributed: bool) -> int:
    """Steps between loss checks: :data:`CHECK_EVERY` on CUDA or under DDP, else 1."""
    return CHECK_EVERY if (torch.device(device).type == "cuda" or distributed) else 1


def _log(msg: str, quiet: bool) -> None:
    """Progress lines of a run (epoch summaries, resume notes) on the ``bench`` logger."""
    if not quiet and bdist.info().is_main:
        log.info(msg)


def _batches(order: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for s in range(0, len(order), size):
        yield order[s : s + size]


def _summary_line(row: dict[str, Any], epochs: int, split: str | None) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}", f"lr {row['lr']:.2e}"]
    if split and f"{split}_loss" in row:
        parts += [
            f"{split}_loss {row[f'{split}_loss']:.4f}",
            f"{split}_dsc {row[f'{split}_dsc']:.4f}",
        ]
    parts += [f"{row['epoch_time_s']:.1f}s", f"{row['images_per_s']:.1f} img/s"]
    return "  ".join(parts) + ("  *best" if row.get("best") else "")
