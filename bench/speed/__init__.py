"""Latency, throughput and memory: timing, memory probes, variants, the measured steps,
the worker process, the run over configurations (:func:`bench.speed.run.run_speed`) and
its result files.
"""
