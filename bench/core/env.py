"""What machine and software produced a result: recorded with every result file."""

from __future__ import annotations

import functools
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "cpu_flags",
    "cpu_isa",
    "cpu_model",
    "device_name",
    "device_slug",
    "environment",
    "git_commit",
    "package_versions",
]

_PACKAGES = [
    "torch",
    "torchvision",
    "segmentation-models-pytorch",
    "timm",
    "numpy",
    "fvcore",
    "thop",
    "pandas",
    "onnx",
    "onnxruntime",
    "openvino",
    "segbench",
]


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_isa(flags: frozenset[str] | None = None) -> str:
    """The widest vector ISA the CPU reports: ``AMX``, ``AVX-512+BF16``, ``AVX-512``,
    ``AVX2`` or ``""`` (unknown).

    A cloud VM's model name can be just "AMD EPYC" for hosts of different generations:
    this project has run on one with AVX2 only and on one with AVX-512 and native bf16,
    whose timings differ (MALUNet eager 46.5 vs 16.6 ms at batch 1). They must never land
    in one file under one name, so the ISA is part of the device's name.
    """
    flags = cpu_flags() if flags is None else flags
    if "amx_tile" in flags:
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512+BF16" if "avx512_bf16" in flags else "AVX-512"
    return "AVX2" if "avx2" in flags else ""


def device_name(device: str | torch.device = "cpu") -> str:
    """The GPU's name, or the CPU's model name with its core count and vector ISA,
    e.g. ``AMD EPYC (2 cores, AVX-512+BF16)``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    detail = [f"{os.cpu_count()} cores", cpu_isa()]
    return f"{cpu_model()} ({', '.join(d for d in detail if d)})"


def device_slug(device: str | torch.device = "cpu") -> str:
    """File-name-safe device label, e.g. ``cpu-amd-epyc-2-cores-avx-512-bf16`` or
    ``cuda-nvidia-h100``."""
    dev = torch.device(device)
    name = re.sub(r"\((r|tm)\)|cpu @[^(]*|@[^(]*", "", device_name(dev), flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{dev.type}-{slug}"[:80]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(root: str | Path | None = None) -> str | None:
    """``HEAD``'s hash, with ``-dirty`` when tracked files outside ``results/`` differ.

    ``results/`` is left out: a job such as ``segbench benchmark`` rewrites committed
    result files in its first stage, which would otherwise mark every later stage's
    numbers as coming from a dirty tree although no code changed.
    """
    root = Path(root) if root else Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """A JSON-ready description of machine, device and software versions."""
    dev = torch.device(device)
    info: dict[str, Any] = {
        "device": dev.type,
        "device_name": device_name(dev),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        # 1/5/15-minute load: a timing taken beside other work says so
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if dev.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def command_line() -> str:
    """This process's command as a user would type it (``segbench ...`` for the CLI,
    whether started as the ``segbench`` script or as ``python -m bench.cli``)."""
    argv0 = Path(sys.argv[0])
    cli = argv0.name == "segbench" or argv0.parts[-3:] == ("bench", "cli", "__main__.py")
    return shlex.join(["segbench", *sys.argv[1:]]) if cli else shlex.join(sys.argv)
