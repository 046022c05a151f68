"""``segbench check-model``: the model contract, run on one model in seconds.

The checks of :mod:`models.contract` (build, output shape, input-size errors, metadata)
plus what the harness needs on top: logits rather than probabilities, eval/no_grad
consistency, determinism at a fixed seed, a ``state_dict`` round trip, every op known to
segbench's MAC counter, ONNX export and a two-step training smoke test with the
engine's loss on synthetic data. Each check gives pass/fail, what was seen and what to
change. A check is *critical* when training or counting depends on it (a wrong output
size, probabilities instead of logits, an uncounted op, a model that cannot train or
reload its checkpoint): :func:`exit_code` is then non-zero.

Everything runs on CPU at the model's smallest valid side of at least ``at_least``
(64 px by default), non-square, so a model of a few hundred thousand parameters is
checked in a few seconds.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.core import exitcodes

__all__ = ["CheckResult", "exit_code", "format_results", "run_checks"]


@dataclass(frozen=True)
class CheckResult:
    """One check: ``passed`` is ``None`` when it was skipped (an earlier check failed)."""

    name: str
    passed: bool | None
    critical: bool
    detail: str = ""
    fix: str = ""

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]


def _seeded(name: str, seed: int, **kwargs: int) -> torch.nn.Module:
    from models import create_model
    from models.contract import no_network

    torch.manual_seed(seed)
    with no_network():
        return create_model(name, **kwargs)


def _input(name: str, at_least: int, n: int = 2, channels: int = 3) -> torch.Tensor:
    from models.contract import contract_sizes

    h, w = contract_sizes(name, at_least)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, channels, h, w, generator=gen)


def _logits(name: str, at_least: int) -> None:
    """Random-init outputs that all lie in [0, 1], or sum to 1 over classes, are
    probabilities: BCE-with-logits and the sigmoid threshold would then be wrong."""
    for classes in (1, 2):
        model = _seeded(name, 0, num_classes=classes).eval()
        with torch.no_grad():
            out = model(_input(name, at_least))
        assert not (out.min() >= 0 and out.max() <= 1), (
            f"{name}: every output lies in [{out.min():.3g}, {out.max():.3g}] with "
            f"{classes} class(es): probabilities (sigmoid?), not logits"
        )
        if classes == 2:
            sums = out.sum(dim=1)
            assert not torch.allclose(sums, torch.ones_like(sums), atol=1e-4), (
                f"{name}: the 2 class maps sum to 1 at every pixel: a softmax, not logits"
            )


def _eval_consistency(name: str, at_least: int) -> None:
    model = _seeded(name, 0).eval()
    x = _input(name, at_least)
    with torch.no_grad():
        a = model(x)
    b = model(x)  # autograd on
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (
        f"{name}: eval outputs differ with and without torch.no_grad "
        f"(max difference {(a - b).abs().max():.3g})"
    )
    with torch.no_grad():
        again = model(x)
    assert torch.equal(a, again), f"{name}: two eval forwards of the same input differ"
    train_out = model.train()(x)
    assert train_out.shape == a.shape, (
        f"{name}: train-mode forward gave {tuple(train_out.shape)}, eval {tuple(a.shape)}"
    )


def _determinism(name: str, at_least: int) -> None:
    a, b = _seeded(name, 0).eval(), _seeded(name, 0).eval()
    sa, sb = a.state_dict(), b.state_dict()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{name}: two builds at seed 0 differ in {differ[:5]}"
    x = _input(name, at_least)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)), f"{name}: two builds at seed 0 give different outputs"


def _round_trip(name: str, at_least: int) -> None:
    a, b = _seeded(name, 0).eval(), _seeded(name, 1).eval()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))  # strict: keys and shapes match
    x = _input(name, at_least)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert torch.equal(ya, yb), (
        f"{name}: a model loaded from another's state_dict gives other outputs (max "
        f"difference {(ya - yb).abs().max():.3g}): some weights are not in the state_dict"
    )


def _counted(name: str, at_least: int) -> str:
    from bench.cost.flops import analyze

    model = _seeded(name, 0)
    x = _input(name, at_least, n=1)
    c = analyze(model, tuple(x.shape))
    ops = "; ".join(f"{k}:{v}" for k, v in c.unsupported_ops.items())
    assert not c.unsupported_ops, f"{name}: ops without a counting rule: {ops}"
    return f"{c.params_total:,} params, {c.macs:,} MACs at {tuple(x.shape)}"


def _onnx(name: str, at_least: int) -> str:
    from bench.deploy.export import export_onnx

    model = _seeded(name, 0).eval()
    with tempfile.TemporaryDirectory(prefix="segbench-check-") as tmp:
        # the TorchScript exporter first: several times faster than dynamo on small models
        row = export_onnx(
            model,
            Path(tmp) / f"{name}.onnx",
            _input(name, at_least, n=1),
            exporters=("torchscript", "dynamo"),
        )
    assert row["status"] == "ok", f"{name}: ONNX export failed: {row['reason']}"
    return f"exported with the {row['exporter']} exporter, opset {row['opset']}"


def _train_smoke(name: str, at_least: int, steps: int = 2) -> str:
    """``steps`` AdamW steps with the engine's loss (BCE + Dice, side outputs weighted by
    ``loss_weights``) on a synthetic batch: finite loss, every parameter in the graph and
    moved."""
    from bench.engine.losses import build_loss
    from models import model_info
    from models.contract import TRAIN_BATCH

    info = model_info(name)
    model = _seeded(name, 0).train()
    x = _input(name, at_least, n=TRAIN_BATCH)
    gen = torch.Generator().manual_seed(1)
    target = (torch.rand(TRAIN_BATCH, 1, *x.shape[-2:], generator=gen) > 0.5).float()
    loss_fn = build_loss(loss_weights=info.loss_weights)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert named, f"{name}: no trainable parameters"
    before = [p.detach().clone() for _, p in named]
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-3)
    losses = []
    for _ in range(steps):
        if info.has_aux:
            out, aux = model.forward_aux(x)
        else:
            out, aux = model(x), []
        loss = loss_fn(out, target, aux)
        assert torch.isfinite(loss), f"{name}: loss is {loss.item()}"
        opt.zero_grad()
        loss.backward()
        unused = [n for n, p in named if p.grad is None]
        assert not unused, f"{name}: parameters outside the loss graph: {unused[:5]}"
        opt.step()
        losses.append(loss.item())
    stuck = [n for (n, p), b in zip(named, before) if torch.equal(b, p.detach())]
    assert not stuck, f"{name}: parameters unchanged after {steps} steps: {stuck[:5]}"
    return "loss " + " -> ".join(f"{v:.4f}" for v in losses)


# name, critical, function(name, at_least) -> optional detail, what to change
_Check = tuple[str, bool, Callable[[str, int], object], str]


def _checks(onnx: bool) -> list[_Check]:
    from models import contract

    checks: list[_Check] = [
        (
            "builds offline (1 and 2 classes, 3 and 1 channels)",
            True,
            lambda n, s: contract.check_builds_offline(n),
            "the builder takes num_classes= and in_channels=, returns the registered class "
            "and downloads nothing (weights=None)",
        ),
        (
            "output shape and dtype at the input size",
            True,
            contract.check_forward_shape,
            "forward returns float logits (N, num_classes, H, W) at the input size: up-sample "
            "the head to x.shape[-2:]; a dict or tuple output needs output=<key or index> at "
            "registration; forward_aux exists exactly when loss_weights has side weights",
        ),
        (
            "logits, not probabilities (range check)",
            True,
            _logits,
            "return the scores before sigmoid/softmax: segbench's loss is BCE with logits "
            "and its metrics threshold sigmoid(logits)",
        ),
        (
            "declared input multiple (a size that should fail)",
            False,
            contract.check_input_errors,
            "declare the sizes the model takes (input_spec) and, for a SegmentationModel, "
            "call self.check_input_shape(x) first in forward",
        ),
        (
            "train/eval and no_grad consistency",
            False,
            _eval_consistency,
            "eval-mode outputs must not depend on autograd or on earlier calls (no state "
            "kept between forwards)",
        ),
        (
            "determinism at a fixed seed",
            False,
            _determinism,
            "draw every random initial value from torch's generator (not numpy, random or "
            "the clock), so a seed reproduces a run",
        ),
        (
            "state_dict round trip",
            True,
            _round_trip,
            "register every weight as an nn.Parameter or buffer of a submodule (not a plain "
            "tensor attribute or a Python list): checkpoints, resume and evaluate reload it",
        ),
        (
            "every op counted by the MAC counter",
            True,
            _counted,
            "express the listed ops with counted ones or add a rule in bench/cost/flops.py "
            "(see docs/counting.md); until then MACs are a lower bound",
        ),
    ]
    if onnx:
        checks.append(
            (
                "ONNX export",
                False,
                _onnx,
                "deployment rows (segbench export, speed --backend onnxruntime) need an "
                "exportable forward: avoid data-dependent Python control flow",
            )
        )
    checks += [
        (
            "training smoke: 2 steps on synthetic data",
            True,
            _train_smoke,
            "the model must train: logits of the masks' size, every parameter in the loss "
            "(remove unused layers), a finite loss",
        ),
        (
            "metadata",
            False,
            lambda n, s: contract.check_metadata(n),
            "give full_name=, paper=, year= and citation= to register_model (shown in the "
            "tables); keep exact counts out of notes",
        ),
    ]
    return checks


def run_checks(name: str, at_least: int = 64, onnx: bool = True) -> list[CheckResult]:
    """Run every check on the registered model ``name``; never raises for a broken model.

    After a failed build every other check is skipped (there is nothing to check).
    """
    from models import model_info

    model_info(name)  # an unknown name raises UnknownModelError here
    results: list[CheckResult] = []
    state = torch.random.get_rng_state()
    try:
        for title, critical, fn, fix in _checks(onnx):
            if results and results[0].passed is False:
                results.append(CheckResult(title, None, critical, "the model does not build"))
                continue
            try:
                detail = fn(name, at_least)
            except AssertionError as err:
                results.append(CheckResult(title, False, critical, str(err), fix))
            except Exception as err:  # noqa: BLE001 - a crash is this check's failure
                results.append(
                    CheckResult(title, False, critical, f"{type(err).__name__}: {err}", fix)
                )
            else:
                results.append(CheckResult(title, True, critical, str(detail or "")))
    finally:
        torch.random.set_rng_state(state)
    return results


def exit_code(results: list[CheckResult]) -> int:
    """FAILED when a check that training or counting depends on failed, else OK."""
    return exitcodes.FAILED if any(r.critical and r.passed is False for r in results) else 0


def format_results(name: str, results: list[CheckResult], header: str = "") -> list[str]:
    """Lines for the terminal: one per check, then what to change for each failure."""
    lines = [header] if header else []
    for r in results:
        mark = "" if r.passed is not False or r.critical else " (warning)"
        lines.append(f"  {r.status}  {r.name}{mark}" + (f": {r.detail}" if r.detail else ""))
        if r.passed is False and r.fix:
            lines.append(f"        fix: {r.fix}")
    failed = [r for r in results if r.passed is False]
    critical = [r for r in failed if r.critical]
    lines.append(
        f"{name}: {sum(r.passed is True for r in results)} passed, {len(failed)} failed"
        + (f" ({len(critical)} that training or counting depends on)" if critical else "")
        + (
            f", {sum(r.passed is None for r in results)} skipped"
            if any(r.passed is None for r in results)
            else ""
        )
    )
    return lines
