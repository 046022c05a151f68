"""Jobs that chain the parts: the main benchmark (``benchmark``) and sweeps over
models x datasets x seeds (``sweep_definition`` -> ``sweep_planning`` -> ``sweep_execution``).
"""
