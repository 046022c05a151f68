"""What a model costs without running it for time: the FLOP counter (``flops``), the
complexity table and its cross-checks, the golden file and the roofline model.
"""
