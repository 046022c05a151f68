"""Training and evaluation: configuration and recipes, run folders, the training loop,
evaluation, checkpoints, losses, metrics and distributed helpers.
"""
