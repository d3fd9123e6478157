"""Experiments: the paper's claims as grids of training runs (``pipeline experiment``).

``spec`` reads an experiment file, ``runner`` generates its data and runs its grid (resumable, in
parallel processes), ``stats`` summarises seeds (mean, std, 95% CI), ``report`` writes the table
and figure from the run directories alone.
"""
