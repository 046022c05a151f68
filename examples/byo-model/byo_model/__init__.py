"""An example model package of your own (see segbench's README, "Benchmark your own model")."""

from byo_model.net import TinySeg

__all__ = ["TinySeg"]
