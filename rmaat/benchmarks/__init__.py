"""Benchmarks behind ``pipeline bench``: each reports ratios of kinds/modes measured in one run.

Submodules import torch; this package itself does not.
"""
