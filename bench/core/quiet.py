"""Silence third-party chatter (prints, warnings, loggers, C-level output) around one call.

The counting cross-checks (thop, fvcore) print per-module lines and warn about every module
they skip; the ONNX exporters print progress and, on a failure, C++ code dumps whole graphs
to file descriptor 2. None of it is a result, and a caller that wants the reason has the
exception. Only :func:`silenced` does this, so every caller mutes the same way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["silenced"]


@contextlib.contextmanager
def _descriptors_to_scratch() -> Iterator[None]:
    # Output written by C/C++ code goes to the file descriptors 1 and 2 directly, out of
    # reach of contextlib.redirect_*: point the descriptors at a scratch file meanwhile.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
        except OSError:  # no real descriptors (embedded interpreter): Python-level only
            pass
        try:
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


@contextlib.contextmanager
def silenced(*, loggers: Sequence[str] = (), descriptors: bool = False) -> Iterator[None]:
    """Mute stdout, stderr and warnings for the block; raise ``loggers`` to CRITICAL.

    ``descriptors=True`` also redirects the process's file descriptors 1 and 2 (C-level
    output); the previous logger levels and descriptors are restored on exit, error or not.
    """
    logs = [logging.getLogger(n) for n in loggers]
    levels = [lg.level for lg in logs]
    try:
        for lg in logs:
            lg.setLevel(logging.CRITICAL)
        with (
            _descriptors_to_scratch() if descriptors else contextlib.nullcontext(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(logs, levels, strict=True):
            lg.setLevel(lvl)
