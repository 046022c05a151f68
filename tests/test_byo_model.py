"""Bring your own model: plain nn.Modules, --import of modules and loose files, entry points,
name clashes, the Python API and a user's own ``models`` package on sys.path.

The entry-point test installs ``examples/byo-model`` for real (``pip install --target``
into a temporary folder, so ``importlib.metadata`` reads a real distribution's
``entry_points.txt``) and drives check-model, complexity, a 1-epoch 64-px training and
the report in a subprocess that has that folder on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench import cli
from models import (
    InputSizeError,
    InputSpec,
    ModelImportError,
    ModuleAdapter,
    create_model,
    import_models,
    list_models,
    model_info,
    register_model,
    registry,
)
from models import external as ext

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "byo-model"
PY = sys.executable


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations, imports and SEGBENCH_IMPORT of a test are undone after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(ext, "_imported", set(ext._imported))
    monkeypatch.setenv(ext.IMPORT_ENV, "")
    yield


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, paths)])
    env.pop(ext.IMPORT_ENV, None)
    return env


class DictNet(nn.Module):
    """A plain module returning a dict, as torchvision's segmentation models do."""

    def __init__(self, num_classes: int = 1, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x), "aux": x}


# --- plain nn.Module registration -------------------------------------------------------------


def test_plain_module_is_wrapped_checked_and_its_logits_picked(scratch: None) -> None:
    register_model("dict_net", input_spec=InputSpec(multiple=4, min_size=8), output="out")(DictNet)
    model = create_model("dict_net", num_classes=2)
    assert isinstance(model, ModuleAdapter) and isinstance(model.net, DictNet)
    out = model(torch.randn(1, 3, 8, 12))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 8, 12)
    with pytest.raises(InputSizeError, match=r"^dict_net: H and W must be multiples of 4"):
        model(torch.randn(1, 3, 8, 10))
    assert model_info("dict_net").source == f"module {__name__}"
    assert model_info("dict_net").external
    assert not model_info("malunet").external and model_info("malunet").source == ""
    # parameters keep their names under net., counts are the module's own
    assert set(model.state_dict()) == {"net.conv.weight", "net.conv.bias"}


def test_plain_module_needs_an_input_spec_and_an_output_selector(scratch: None) -> None:
    with pytest.raises(TypeError, match="plain nn.Module needs its input constraint"):
        register_model("no_spec")(DictNet)
    register_model("no_selector", input_spec=InputSpec(1, 1))(DictNet)
    with pytest.raises(TypeError, match=r"returned dict, not a tensor; register with output="):
        create_model("no_selector")(torch.randn(1, 3, 4, 4))
    assert "no_spec" not in list_models()


# --- --import and name clashes ------------------------------------------------------------


def _write(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


LOOSE = """
    import torch.nn as nn
    from models import InputSpec, register_model

    @register_model("{name}", input_spec=InputSpec(multiple=2, min_size=4))
    class Loose(nn.Module):
        def __init__(self, num_classes=1, in_channels=3):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, num_classes, 1)

        def forward(self, x):
            return self.conv(x)
"""


def test_import_of_a_loose_file_registers_with_its_source(scratch: None, tmp_path: Path) -> None:
    path = _write(tmp_path / "mine.py", LOOSE.format(name="loose_net"))
    assert import_models([str(path)], export=True) == [str(path.resolve())]
    assert model_info("loose_net").source == f"file {path.resolve()}"
    assert os.environ[ext.IMPORT_ENV] == str(path.resolve())  # child processes import it too
    import_models([str(path)])  # a second import of the same file is a no-op, not a clash
    # a child process (sweep cell, torchrun or speed worker) registers it from the variable
    code = "from models import model_info; print(model_info('loose_net').source)"
    proc = subprocess.run(
        [PY, "-c", code], env={**_env(), ext.IMPORT_ENV: os.environ[ext.IMPORT_ENV]},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"file {path.resolve()}"
    with pytest.raises(ModelImportError, match=r"--import .*nope\.py: no such file"):
        import_models([str(tmp_path / "nope.py")])


def test_a_name_clash_names_both_sources(scratch: None, tmp_path: Path) -> None:
    path = _write(tmp_path / "clash.py", LOOSE.format(name="malunet"))
    with pytest.raises(ModelImportError) as err:
        import_models([str(path)])
    msg = str(err.value)
    assert "'malunet' is registered twice" in msg
    assert f"file {path.resolve()}" in msg and "segbench (models.malunet)" in msg


def test_cli_complexity_with_import_of_a_loose_file(scratch: None, tmp_path: Path, capsys) -> None:
    path = _write(tmp_path / "mine.py", LOOSE.format(name="loose_cli_net"))
    out = tmp_path / "results"
    argv = ["complexity", "--import", str(path), "--models", "loose_cli_net"]
    argv += ["--input-size", "1x3x16x16", "--no-cross-check", "--quiet", "--results", str(out)]
    assert cli.main(argv) == 0
    rows = json.loads((out / "complexity" / "complexity.json").read_text())["rows"]
    assert [(r["model"], r["source"], r["macs"]) for r in rows] == [
        ("loose_cli_net", f"file {path.resolve()}", 3 * 16 * 16)
    ]
    assert "loose_cli_net" in capsys.readouterr().out


def test_every_command_with_models_takes_import() -> None:
    for command in (
        "models",
        "complexity",
        "speed",
        "export",
        "train",
        "evaluate",
        "benchmark",
        "check-model",
    ):
        (sub,) = cli.build_parser(command)._subparsers._group_actions[0].choices.values()
        action = sub._option_string_actions.get("--import")
        assert action is not None and action.dest == "imports", command
        assert action.default == [] and action.nargs is None  # append: repeatable
        assert type(action).__name__ == "_AppendAction", command


def test_a_sweep_file_imports_its_models(scratch: None, tmp_path: Path) -> None:
    from bench.jobs.sweep_definition import SweepError, sweep_from_dict

    _write(tmp_path / "sweep_models.py", LOOSE.format(name="swept_net"))
    (tmp_path / "data").mkdir()
    raw = {"import": "sweep_models.py", "models": ["swept_net"], "datasets": ["data"]}
    cfg = sweep_from_dict(raw, source=tmp_path / "s.yaml")
    assert cfg.models == ("swept_net",)
    assert cfg.imports == (str((tmp_path / "sweep_models.py").resolve()),)
    with pytest.raises(SweepError, match=r"s\.yaml: import .*missing\.py: no such file"):
        sweep_from_dict({**raw, "import": ["missing.py"]}, source=tmp_path / "s.yaml")


# --- the Python API on an unregistered instance -----------------------------------------------


def test_api_complexity_of_an_unregistered_instance() -> None:
    from bench import api

    before = list_models()
    df = api.complexity(DictNet(num_classes=1), (1, 3, 16, 16), output="out", name="mine")
    row = df.iloc[0]
    assert row["model"] == "mine" and row["status"] == "ok"
    assert row["macs"] == 3 * 9 * 16 * 16 and row["params_total"] == 3 * 9 + 1
    assert row["source"] == f"instance of {__name__}.DictNet"
    assert list_models() == before  # registered for the call only


# --- a user's own `models` package first on sys.path ------------------------------------------


def test_a_user_models_package_does_not_change_what_segbench_lists(tmp_path: Path, capsys) -> None:
    user = tmp_path / "repo"
    (user / "models").mkdir(parents=True)
    (user / "models" / "__init__.py").write_text(
        "def list_models(*a, **k):\n    return ['users_own_model']\n"
    )
    assert cli.main(["models", "egeunet"]) == 0
    expected = capsys.readouterr().out
    # `python -c` puts the current directory, the user's repository, first on sys.path
    code = "import sys; from bench.cli import main; sys.exit(main(['models', 'egeunet']))"
    proc = subprocess.run(
        [PY, "-c", code], cwd=user, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected and "users_own_model" not in proc.stdout


@pytest.mark.slow
def test_bench_api_pins_segbench_models_and_refuses_a_user_models_imported_first(
    tmp_path: Path,
) -> None:
    user = tmp_path / "repo"
    (user / "models").mkdir(parents=True)
    (user / "models" / "__init__.py").write_text("USERS = True\n")
    # the notebook case: bench.api pins segbench's package before anything imports it
    code = "import bench.api, models; print(models.__file__); print(models.list_models('egeunet'))"
    proc = subprocess.run(
        [PY, "-c", code], cwd=user, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(ROOT / "models" / "__init__.py"), "['egeunet']"]
    # the other order is refused, naming both packages, never silently used
    proc = subprocess.run(
        [PY, "-c", "import models, bench.api"], cwd=user, env=_env(), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"is '{user / 'models' / '__init__.py'}', not segbench's" in proc.stderr


# --- the example package, installed for real, through its entry point -------------------------


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/byo-model installed with pip into a temporary folder (not the venv)."""
    tmp = tmp_path_factory.mktemp("byo")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp / "site"
    cmd = [PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    proc = subprocess.run(
        [*cmd, "--target", str(site), str(src)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"pip install of the example failed: {proc.stderr}")
    assert (site / "segbench_byo_model-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


@pytest.mark.slow
def test_the_installed_example_goes_from_check_model_to_a_report_row(
    installed_example: Path, tmp_path: Path
) -> None:
    from bench.data.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "synth", n=16, size=(64, 64), seed=0)
    results = tmp_path / "results"
    script = textwrap.dedent(
        f"""
        import json, sys
        from bench.cli import main
        from models import model_info
        print("SOURCE", model_info("tinyseg").source)
        codes = [
            main(["check-model", "tinyseg", "--no-onnx"]),
            main(["complexity", "--models", "malunet,tinyseg", "--input-size", "1x3x64x64",
                  "--no-cross-check", "--quiet", "--results", {str(results)!r}]),
            main(["train", "--model", "tinyseg", "--data", {str(data)!r}, "--epochs", "1",
                  "--input-size", "64", "--batch-size", "4", "--device", "cpu", "--threads",
                  "1", "--quiet", "--results", {str(results)!r}]),
            main(["report", "--results", {str(results)!r}, "--quiet"]),
        ]
        print("CODES", json.dumps(codes))
        """
    )
    proc = subprocess.run(
        [PY, "-c", script],
        cwd=tmp_path,
        env=_env(installed_example),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "SOURCE segbench-byo-model 0.1.0" in lines
    assert "CODES [0, 0, 0, 0]" in lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert any("PASS  output shape and dtype" in line for line in lines)
    rows = json.loads((results / "complexity" / "complexity.json").read_text())["rows"]
    sources = {r["model"]: r["source"] for r in rows}
    assert sources == {"malunet": "", "tinyseg": "segbench-byo-model 0.1.0"}
    (metrics,) = results.glob("runs/*/tinyseg/*/seed*/metrics.json")
    rec = json.loads(metrics.read_text())
    assert rec["model_source"] == "segbench-byo-model 0.1.0" and rec["status"] == "finished"
    assert 0 <= rec["test"]["dsc"] <= 1
    tables = "\n".join(p.read_text() for p in (results / "tables").glob("*.md"))
    assert "tinyseg (external)" in tables  # a labelled row
    readme = (results / "README.md").read_text()
    assert "external model `tinyseg`: from segbench-byo-model 0.1.0" in readme


def test_the_report_labels_an_external_model_and_names_its_source(tmp_path: Path) -> None:
    from bench.analysis.report.external import source_lines
    from bench.analysis.report.load import load_results

    (tmp_path / "complexity").mkdir()
    (tmp_path / "complexity" / "complexity.csv").write_text(
        "model,source,input_shape,params_total,macs,status\n"
        "malunet,,1x3x256x256,177943,83000000,ok\n"
        "tinyseg,segbench-byo-model 0.1.0,1x3x256x256,5505,160000000,ok\n"
    )
    res = load_results(tmp_path)
    assert list(res.complexity["model"]) == ["malunet", "tinyseg (external)"]
    assert source_lines(res) == [
        "- external model `tinyseg`: from segbench-byo-model 0.1.0 (not shipped with segbench)"
    ]


@pytest.mark.slow
def test_api_trains_and_evaluates_an_unregistered_instance(tmp_path: Path) -> None:
    from bench import api
    from bench.data.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "synth", n=16, size=(32, 32), seed=0)
    before = list_models()
    kwargs = {"epochs": 1, "image_size": 32, "batch_size": 4, "threads": 1, "device": "cpu"}
    run = api.train(DictNet(), data, name="dictnet", output="out", results=tmp_path, **kwargs)
    assert run.run_dir.parent.parent.name == "dictnet" and run.metrics["status"] == "finished"
    assert run.metrics["model_source"] == f"instance of {__name__}.DictNet"
    assert len(run.per_image) > 0
    # the run's own model is not registered any more: the instance comes along again
    ev = api.evaluate(
        DictNet(), run_dir=run.run_dir, output="out", device="cpu", compute_hd95=False
    )
    assert ev.record["metrics"]["dsc"] == pytest.approx(run.metrics["test"]["dsc"], abs=1e-6)
    fresh = api.evaluate(
        DictNet(), data, name="dictnet", output="out", split="test", device="cpu",
        settings={"image_size": 32}, compute_hd95=False,
    )  # fmt: skip
    assert len(fresh.per_image) == len(run.per_image)
    assert list_models() == before


def test_evaluate_run_of_an_unimported_external_model_names_the_import_to_give(
    tmp_path: Path,
) -> None:
    """A run trained with --import my_model.py, scored later without it: the error says
    which --import the run recorded, and nothing is imported behind the user's back."""
    import json

    from bench.engine.run_eval import EvalSource, _trained_model
    from models import UnknownModelError

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps({"model": "my_tiny_net", "model_source": "file /somewhere/my_model.py"})
    )
    source = EvalSource(run_dir=run, config={"model": "my_tiny_net"})
    settings = {"model": "my_tiny_net", "model_kwargs": {}}
    with pytest.raises(UnknownModelError, match="pass --import /somewhere/my_model.py"):
        _trained_model(source, settings, "cpu")
    (run / "metrics.json").write_text(json.dumps({"model": "my_tiny_net", "model_source": ""}))
    with pytest.raises(UnknownModelError) as err:
        _trained_model(source, settings, "cpu")
    assert "trained it from" not in str(err.value)
