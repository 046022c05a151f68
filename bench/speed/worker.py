"""The spawned worker process that runs measurements, so a crash inside torch costs one row instead of the whole run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from bench.speed.memory import _free_memory
from bench.speed.variants import MeasurementError, WorkerCrashed, _is_cuda_error, _is_oom, _short


def _worker_main(conn: Any, mem_limit_bytes: int | None = None) -> None:
    """Worker loop: run ``fn(*args, **kwargs)`` per message, reply (kind, payload)."""
    if mem_limit_bytes:
        # RLIMIT_DATA bounds heap and anonymous mappings (Linux >= 4.7): an allocation past
        # it fails inside torch ("can't allocate memory"), which the sweep treats as
        # out-of-memory, instead of the kernel's OOM killer picking a process.
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (mem_limit_bytes, hard))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args, kwargs = msg
        reply: tuple[str, Any]
        try:
            reply = ("ok", fn(*args, **kwargs))
        except Exception as err:
            kind = "oom" if _is_oom(err) else "cuda" if _is_cuda_error(err) else "error"
            reply = (kind, _short(err))
        if reply[0] == "cuda":  # a sticky CUDA error: this process is done, do not touch it
            conn.send(reply)
            return
        _free_memory()  # after the except block: the traceback's tensors are gone
        conn.send(reply)


class Worker:
    """A spawned process that runs measurements, so a crash inside torch (a segfault
    in a kernel) costs one row instead of the whole run; restarted after a crash.

    ``call(fn, ...)`` pickles ``fn`` by reference, so it must be a module-level function.
    Out-of-memory in the worker is re-raised here as ``torch.OutOfMemoryError``, other
    errors as :class:`MeasurementError`, a dead worker as :class:`WorkerCrashed`. After
    any other CUDA error (illegal memory access, device-side assert: the CUDA context is
    unusable from then on) the worker exits and the next call starts a fresh one, so one
    bad configuration does not fail every later one.
    """

    def __init__(self, mem_limit_gb: float | None = None) -> None:
        if mem_limit_gb is not None:
            if not mem_limit_gb > 0:
                raise ValueError(f"mem_limit_gb must be positive, got {mem_limit_gb}")
            try:
                import resource

                resource.RLIMIT_DATA  # noqa: B018  (only checks that it exists)
            except (ImportError, AttributeError):
                raise ValueError("a CPU memory limit needs resource.RLIMIT_DATA (Unix)") from None
        self._limit = int(mem_limit_gb * 2**30) if mem_limit_gb else None
        self._proc: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork is unsafe with CUDA and OpenMP thread pools
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(child, self._limit), daemon=True)
        self._proc.start()
        child.close()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        try:
            self._conn.send((fn, args, kwargs))
            kind, payload = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self._proc.join(10)
            code = self._proc.exitcode
            self._proc = self._conn = None
            raise WorkerCrashed(f"measurement process died ({_exit_text(code)})") from None
        if kind == "ok":
            return payload
        if kind == "oom":
            raise torch.OutOfMemoryError(payload)
        if kind == "cuda":
            self._retire()
            raise MeasurementError(f"{payload} (CUDA context lost; measurement process restarted)")
        raise MeasurementError(payload)

    def _retire(self) -> None:
        """Forget a worker that is exiting on its own (after a sticky CUDA error)."""
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        with contextlib.suppress(OSError):
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()
        self._proc = self._conn = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exit_text(code: int | None) -> str:
    import signal

    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        if name == "SIGKILL":  # what the kernel's OOM killer sends
            return "killed by SIGKILL, possibly the OOM killer; try --cpu-mem-limit"
        return f"killed by {name}"
    return f"exit code {code}"


class BackendWorkers:
    """One worker process per backend, only one alive at a time: switching backend ends the
    previous worker before the next starts.

    Why: in one process, onnxruntime timed after torch's eager measurements was bimodal on
    the 2-core AVX-512 EPYC (MALUNet at batch 1: 5.8 ms in one run, 12.5-12.8 ms in two
    others, each with an IQR under 1 ms), while in a process of its own it ran at 5.2-5.9 ms
    in three of three runs: two libraries' thread pools in one process (torch's OpenMP
    threads, onnxruntime's spinning pool) compete for the two cores. A process per backend
    with the other one gone leaves each library the machine to itself.
    """

    def __init__(self, mem_limit_gb: float | None = None) -> None:
        self._limit = mem_limit_gb
        self._backend: str | None = None
        self._worker: Worker | None = None

    def call_for(self, backend: str) -> Callable[..., Any]:
        """The ``call`` of ``backend``'s worker (started now if another backend had one)."""
        if backend != self._backend:
            self.close()
            self._worker, self._backend = Worker(self._limit), backend
        assert self._worker is not None
        return self._worker.call

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
        self._worker = self._backend = None

    def __enter__(self) -> BackendWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
