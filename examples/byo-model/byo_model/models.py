"""The entry-point module: importing it registers TinySeg with segbench.

``pyproject.toml`` names this module under ``[project.entry-points."segbench.models"]``,
so every segbench command imports it and lists ``tinyseg`` (source: this distribution
and its version). TinySeg is a plain ``nn.Module``: its input constraint is given here,
and ``output="logits"`` says which entry of its dict output holds the logits.
"""

from __future__ import annotations

from byo_model.net import TinySeg
from models import InputSpec, register_model

register_model(
    "tinyseg",
    input_spec=InputSpec(multiple=4, min_size=8),
    output="logits",
    full_name="TinySeg (example of a model of your own)",
    paper="none: segbench's bring-your-own-model example",
    year=2026,
    citation="segbench-byo-example",
    family="example",
)(TinySeg)
