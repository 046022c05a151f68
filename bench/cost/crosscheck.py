"""Cross-checks: thop's, fvcore's and torch FlopCounterMode's MAC counts beside segbench's, so readers can reconcile papers (their "GFLOPs" are thop MACs)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from bench.core.quiet import silenced
from bench.core.shapes import DEFAULT_SHAPE

# thop and fvcore log through these (fvcore: one warning per unsupported module)
_TOOL_LOGGERS = ("fvcore", "iopath", "root")


@dataclass
class CrossCheck:
    """One tool's count: ``macs`` is NaN when the tool failed (``reason`` says why);
    ``params`` is the tool's parameter count where it reports one (thop), else NaN."""

    tool: str
    macs: float = math.nan
    params: float = math.nan
    reason: str = ""
    unsupported: dict[str, int] = field(default_factory=dict)


def _quiet_copy(model: nn.Module) -> nn.Module:
    # Every tool runs on its own CPU copy: thop registers buffers and hooks on the modules it
    # sees, fvcore traces; the caller's model must not notice.
    return copy.deepcopy(model).cpu().eval()


def _thop(model: nn.Module, x: torch.Tensor) -> CrossCheck:
    with silenced(loggers=_TOOL_LOGGERS):
        import thop

        macs, params = thop.profile(_quiet_copy(model), inputs=(x,), verbose=False)
    return CrossCheck("thop", float(round(float(macs))), params=float(round(float(params))))


def _fvcore(model: nn.Module, x: torch.Tensor) -> CrossCheck:
    with silenced(loggers=_TOOL_LOGGERS):
        from fvcore.nn import FlopCountAnalysis

        fca = FlopCountAnalysis(_quiet_copy(model), (x,))
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        fca.tracer_warnings("none")
        with torch.no_grad():
            total = fca.total()
        unsupported = dict(fca.unsupported_ops().most_common())
    return CrossCheck("fvcore", float(total), unsupported=unsupported)


def _torch_counter(model: nn.Module, x: torch.Tensor) -> CrossCheck:
    from torch.utils.flop_counter import FlopCounterMode

    work = _quiet_copy(model)
    with (
        silenced(loggers=_TOOL_LOGGERS),
        torch.no_grad(),
        FlopCounterMode(display=False) as counter,
    ):
        work(x)
    return CrossCheck("torch", float(counter.get_total_flops() // 2))


CROSS_CHECK_TOOLS: dict[str, Callable[[nn.Module, torch.Tensor], CrossCheck]] = {
    "thop": _thop,
    "fvcore": _fvcore,
    "torch": _torch_counter,
}


def cross_checks(
    model: nn.Module,
    input_shape: Sequence[int] = DEFAULT_SHAPE,
    tools: Sequence[str] = ("thop", "fvcore", "torch"),
) -> dict[str, CrossCheck]:
    """thop / fvcore / FlopCounterMode counts of ``model`` on CPU; a failing tool gives NaN."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(input_shape), generator=gen)
    out = {}
    for tool in tools:
        try:
            out[tool] = CROSS_CHECK_TOOLS[tool](model, x)
        except Exception as err:  # noqa: BLE001 - any tool failure becomes NaN + reason
            msg = " ".join(str(err).split())  # in full: the end often says what to do
            out[tool] = CrossCheck(tool, reason=f"{tool} failed: {type(err).__name__}: {msg}")
    return out
