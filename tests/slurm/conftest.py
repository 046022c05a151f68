"""Fixtures of the tests against a real Slurm cluster (``nox -s slurm``).

These tests need the one-node cluster of ``.ci/slurm up`` (``SLURM_CONF`` pointing at
its configuration) and run only when ``SEGBENCH_SLURM=1`` says so (the ``slurm`` nox
session sets both); elsewhere, e.g. in ``nox -s tests``, they are skipped. With
``SEGBENCH_SLURM=1`` an unreachable cluster fails them: a CI run must not pass by
skipping everything.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.data.synthetic import make_synthetic

ENABLED = os.environ.get("SEGBENCH_SLURM") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="needs a real Slurm cluster: run `nox -s slurm`")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The cluster's ``SLURM_CONF``, after checking that slurmctld answers."""
    conf = os.environ.get("SLURM_CONF", "")
    if not conf or not Path(conf).is_file():
        pytest.fail(f"SEGBENCH_SLURM=1 but SLURM_CONF={conf!r} is not a file: run `.ci/slurm up`")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.fail(f"slurmctld does not answer `scontrol ping`: {ping.stdout}{ping.stderr}")
    return conf


@dataclass
class SbatchCall:
    """One ``sbatch`` call seen by the wrapper: the array spec of its script and the job id."""

    array: str
    job: str


class SbatchLog:
    """A wrapper ``sbatch`` first on PATH: records each call, then runs the real one.

    The tests count submissions with it: a rerun that submits a finished cell again
    shows up as an extra call, or as an array with more tasks than expected.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "sbatch_calls.txt"
        self.log.touch()
        real = shutil.which("sbatch")
        assert real, "no sbatch on PATH"
        wrapper = folder / "sbatch"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'array=$(sed -n "s/^#SBATCH --array=//p" "$1")\n'
            f'out=$("{real}" "$@") || exit $?\n'
            f'echo "${{array:--}} $(echo "$out" | awk \'{{print $NF}}\')" >> "{self.log}"\n'
            'echo "$out"\n'
        )
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        self.folder = folder

    def calls(self) -> list[SbatchCall]:
        return [SbatchCall(*ln.split()) for ln in self.log.read_text().splitlines() if ln]


@pytest.fixture(scope="session")
def sbatch_log(slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> SbatchLog:
    log = SbatchLog(tmp_path_factory.mktemp("sbatch"))
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{log.folder}{os.pathsep}{old}"  # inherited by the sweep and its jobs
    yield log
    os.environ["PATH"] = old


@pytest.fixture(scope="session")
def syn_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic 64x64 lesions: a few seconds of MALUNet per epoch at most."""
    return make_synthetic(tmp_path_factory.mktemp("syn") / "syn", n=16, size=(64, 64), seed=0)
