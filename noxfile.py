"""Developer sessions: `nox -s tests`, `nox -s benchmark` (the `segbench benchmark` job),
`nox -s lint`, `nox -s forward-timing` (forward-pass timings per commit, pytest-benchmark),
`nox -s slurm`.

All sessions share ONE virtual environment (`.nox/segbench`): torch alone is
about 6 GB, so building it once per session would be wasteful. nox has no
built-in shared environment, so the sessions run with ``venv_backend="none"``
and call into a venv this file creates with the running interpreter (pip, not
uv: only pip sees the machine's local torch wheels).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.download_python = "never"
nox.options.default_venv_backend = "none"

ROOT = Path(__file__).parent
VENV = ROOT / ".nox" / "segbench"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".segbench-installed"


def _install_key() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def _env(session: nox.Session) -> dict[str, str]:
    """Create (once) and return the environment of the shared venv."""
    if not (BIN / "python").exists():
        session.log(f"creating shared environment {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not STAMP.exists() or STAMP.read_text() != _install_key():
        session.log("installing segbench[dev] (torch from the local wheels; first run only)")
        # run_install, not run: `nox --install-only` skips session.run, and the stamp
        # below would then mark an empty venv as installed
        session.run_install(
            str(BIN / "python"), "-m", "pip", "install", "-q", "-e", ".[dev]", external=True
        )
        STAMP.write_text(_install_key())
    env = {
        "VIRTUAL_ENV": str(VENV),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return env


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Run the test suite (fast tests; add `-- -m slow` for the slow ones)."""
    env = _env(session)
    session.run(str(BIN / "python"), "-m", "pytest", *session.posargs, env=env, external=True)


@nox.session(venv_backend="none")
def slurm(session: nox.Session) -> None:
    """Sweeps against a real one-node Slurm cluster (tests/slurm; root and apt, or Slurm,
    munge and MariaDB installed): `.ci/slurm up` installs and starts it, `.ci/slurm down`
    stops what it started, unless the cluster was already up before the session."""
    env = _env(session)
    script = str(ROOT / ".ci" / "slurm")
    state = os.environ.get("SEGBENCH_SLURM_DIR", "/tmp/segbench-slurm")
    script_env = {"SEGBENCH_SLURM_DIR": state}
    status = subprocess.run(
        ["bash", script, "status"], env={**os.environ, **script_env}, capture_output=True
    )
    was_up = status.returncode == 0
    session.run("bash", script, "up", env=script_env, external=True)
    try:
        env.update(SEGBENCH_SLURM="1", SLURM_CONF=str(Path(state) / "etc" / "slurm.conf"))
        session.run(
            str(BIN / "python"),
            "-m",
            "pytest",
            "tests/slurm",
            "-p",
            "no:cacheprovider",
            *session.posargs,
            env=env,
            external=True,
        )
    finally:
        if was_up:
            session.log(f"the cluster was up before this session: left running ({state})")
        else:
            session.run("bash", script, "down", env=script_env, external=True)


@nox.session(venv_backend="none")
def benchmark(session: nox.Session) -> None:
    """Run the main benchmark job (`segbench benchmark`); arguments after `--` pass through."""
    env = _env(session)
    session.run(str(BIN / "segbench"), "benchmark", *session.posargs, env=env, external=True)


@nox.session(venv_backend="none", name="forward-timing")
def forward_timing(session: nox.Session) -> None:
    """pytest-benchmark timings of each model's forward pass (forward_timing/), saved to
    compare commits (--benchmark-compare); not the benchmark (`nox -s benchmark`)."""
    env = _env(session)
    session.run(
        str(BIN / "python"),
        "-m",
        "pytest",
        "forward_timing",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--benchmark-only",
        "--benchmark-autosave",
        *session.posargs,
        env=env,
        external=True,
    )


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff check + format check."""
    env = _env(session)
    session.run(str(BIN / "ruff"), "check", ".", env=env, external=True)
    session.run(str(BIN / "ruff"), "format", "--check", ".", env=env, external=True)


@nox.session(venv_backend="none", name="update-golden")
def update_golden(session: nox.Session) -> None:
    """Regenerate results/complexity/golden.json deliberately (after a model change)."""
    env = _env(session)
    session.run(
        str(BIN / "segbench"),
        "complexity",
        "--update-golden",
        *session.posargs,
        env=env,
        external=True,
    )
