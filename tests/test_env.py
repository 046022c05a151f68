"""Machine identity: hosts that share a CPU model name but not an ISA are told apart."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis.report import load
from bench.core import env


@pytest.mark.parametrize(
    ("flags", "isa"),
    [
        ({"sse2", "avx", "avx2", "fma"}, "AVX2"),
        ({"avx2", "avx512f", "avx512bw"}, "AVX-512"),
        ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, "AVX-512+BF16"),
        ({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "AMX"),
        ({"neon", "asimd"}, ""),
        (set(), ""),
    ],
)
def test_cpu_isa_is_the_widest_vector_level(flags: set[str], isa: str) -> None:
    assert env.cpu_isa(frozenset(flags)) == isa


def test_same_model_name_different_isa_gives_different_files(monkeypatch) -> None:
    # the two hosts this project ran on: both report "AMD EPYC"
    monkeypatch.setattr(env, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(env.os, "cpu_count", lambda: 2)
    slugs = {}
    for flags in ({"avx2"}, {"avx2", "avx512f", "avx512_bf16"}):
        monkeypatch.setattr(env, "cpu_flags", lambda flags=flags: frozenset(flags))
        slugs[env.cpu_isa()] = (env.device_name("cpu"), env.device_slug("cpu"))
    assert slugs == {
        "AVX2": ("AMD EPYC (2 cores, AVX2)", "cpu-amd-epyc-2-cores-avx2"),
        "AVX-512+BF16": ("AMD EPYC (2 cores, AVX-512+BF16)", "cpu-amd-epyc-2-cores-avx-512-bf16"),
    }


def test_intel_name_keeps_model_and_drops_clock(monkeypatch) -> None:
    monkeypatch.setattr(env, "cpu_model", lambda: "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz")
    monkeypatch.setattr(env.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(env, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert env.device_slug("cpu") == "cpu-intel-xeon-platinum-8375c-8-cores-avx-512"


def _speed_file(root: Path, slug: str, started: str) -> None:
    d = root / "speed"
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "model": ["unet"],
            "mode": ["inference"],
            "batch_size": [1],
            "median_ms": [10.0],
            "device_name": [slug],
        }
    ).to_csv(d / f"speed-{slug}.csv", index=False)
    meta = {
        "schema": "segbench-speed/1",
        "device_slug": slug,
        "rows": [],
        "runs": {started: {"command": "segbench speed", "started": started}},
    }
    (d / f"speed-{slug}.json").write_text(json.dumps(meta))


def test_the_most_recently_measured_cpu_is_primary(tmp_path: Path) -> None:
    # recency decides, not the name (the second file sorts after the first either way)
    _speed_file(tmp_path, "cpu-amd-epyc-2-cores-avx2", "2026-11-28T08:37:59+00:00")
    _speed_file(tmp_path, "cpu-amd-epyc-2-cores-avx-512-bf16", "2026-12-07T06:10:00+00:00")
    res = load.load_results(tmp_path)
    assert res.primary_device == "cpu-amd-epyc-2-cores-avx-512-bf16"
    _speed_file(tmp_path, "cpu-amd-epyc-2-cores-avx2", "2026-12-08T00:00:00+00:00")
    assert load.load_results(tmp_path).primary_device == "cpu-amd-epyc-2-cores-avx2"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/venv/bin/segbench", "train", "--model", "unet"], "segbench train --model unet"),
        (["/repo/bench/cli/__main__.py", "sweep", "a b.yaml"], "segbench sweep 'a b.yaml'"),
        (["/venv/bin/pytest", "-q"], "/venv/bin/pytest -q"),
    ],
)
def test_command_line_names_the_cli_however_it_was_started(monkeypatch, argv, expected) -> None:
    monkeypatch.setattr(env.sys, "argv", argv)
    assert env.command_line() == expected
