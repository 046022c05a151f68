"""bench.core.quiet.silenced: mutes Python and C-level output, restores loggers and fds."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest

from bench.core.quiet import silenced


def test_python_output_warnings_and_loggers_are_muted_then_restored(capsys):
    log = logging.getLogger("segbench-test-tool")
    log.setLevel(logging.INFO)
    with silenced(loggers=["segbench-test-tool"]):
        print("noise")
        print("noise", file=sys.stderr)
        warnings.warn("noise", UserWarning, stacklevel=1)
        assert log.level == logging.CRITICAL
    assert log.level == logging.INFO
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_levels_are_restored_when_the_block_raises():
    log = logging.getLogger("segbench-test-raise")
    log.setLevel(logging.DEBUG)
    with pytest.raises(RuntimeError), silenced(loggers=["segbench-test-raise"]):
        raise RuntimeError("boom")
    assert log.level == logging.DEBUG


def test_descriptors_mutes_c_level_writes_and_gives_them_back():
    # os.write to fd 2 bypasses sys.stderr, like the exporters' C++ log; a child process
    # so that pytest's own capture does not hide the difference.
    code = (
        "import os\n"
        "from bench.core.quiet import silenced\n"
        "with silenced(descriptors=True):\n"
        "    os.write(2, b'hidden\\n'); os.write(1, b'hidden\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=True)
    assert done.stdout == b""
    assert done.stderr == b"after\n"
