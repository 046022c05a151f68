"""A plain ``nn.Module`` seen through the :class:`~models.base.SegmentationModel` contract.

Research code rarely subclasses segbench's base class: its model is an ``nn.Module``
whose ``forward`` returns logits, or a dict (``{"out": logits, "aux": ...}``, the
torchvision convention) or a tuple (``(logits, features)``). ``register_model(...,
input_spec=InputSpec(...), output=...)`` accepts such a module; :func:`create_model`
wraps each instance in :class:`ModuleAdapter`, which

* checks every input against the declared ``input_spec`` (the check a ``SegmentationModel``
  makes itself), so a bad size fails with segbench's message before the forward runs;
* returns the logits tensor picked by ``output`` (:func:`select_logits`).

The wrapped module is the child ``net``: its parameters appear as ``net.<name>`` in
``state_dict`` and in per-module breakdowns. Parameter and MAC counts are unchanged
(the adapter adds no parameter and no op).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from models.base import InputSpec, SegmentationModel

__all__ = ["ModuleAdapter", "OutputSelector", "select_logits"]

#: How to find the logits in a forward's output: ``None`` (the output is the tensor), a
#: dict key, a tuple/list index, or a function of the output returning the tensor.
OutputSelector = str | int | Callable[[Any], torch.Tensor] | None


def select_logits(out: Any, output: OutputSelector, model: str = "model") -> torch.Tensor:
    """The logits tensor in ``out`` as ``output`` says; a clear error when it is not there."""
    if callable(output):
        picked = output(out)
    elif output is None:
        picked = out
    elif isinstance(output, str):
        if not isinstance(out, Mapping) or output not in out:
            keys = list(out) if isinstance(out, Mapping) else None
            raise TypeError(
                f"{model}: output={output!r} names a dict key, but forward returned "
                + (f"a dict with keys {keys}" if keys is not None else type(out).__name__)
            )
        picked = out[output]
    elif isinstance(output, int):
        if (
            not isinstance(out, Sequence)
            or isinstance(out, str)
            or not -len(out) <= output < len(out)
        ):
            raise TypeError(
                f"{model}: output={output} is a tuple index, but forward returned "
                + (f"{len(out)} items" if isinstance(out, Sequence) else type(out).__name__)
            )
        picked = out[output]
    else:
        raise TypeError(
            f"{model}: output must be None, a key, an index or a function, got {output!r}"
        )
    if not isinstance(picked, torch.Tensor):
        hint = ""
        if isinstance(picked, Mapping):
            hint = f"; register with output=<key> (keys: {', '.join(map(str, picked))})"
        elif isinstance(picked, (tuple, list)):
            hint = "; register with output=<index of the logits>"
        raise TypeError(f"{model}: forward returned {type(picked).__name__}, not a tensor{hint}")
    return picked


class ModuleAdapter(SegmentationModel):
    """A registered plain ``nn.Module`` (child ``net``) with segbench's input check and
    output selection. ``input_spec`` is per instance (it comes from the registration)."""

    input_spec = InputSpec(multiple=1, min_size=1)  # replaced per instance

    def __init__(
        self, net: nn.Module, in_channels: int, input_spec: InputSpec, output: OutputSelector = None
    ) -> None:
        super().__init__(in_channels)
        self.net = net
        self.input_spec = input_spec
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        return select_logits(self.net(x), self.output, self.contract_name)
