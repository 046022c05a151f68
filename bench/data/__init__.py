"""Datasets: folder layouts, decoding, splits, the preprocessing cache, checks,
augmentation and synthetic data. Entry point: :func:`bench.data.cache.prepare_data`.
"""
