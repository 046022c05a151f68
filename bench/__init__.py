"""segbench harness: complexity, speed, data, training, evaluation, reports, sweeps."""

__version__ = "0.1.0"
