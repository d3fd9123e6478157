"""Errors a user can cause (bad parameters, bad protocol); the CLI prints them as one line."""


class SimulationInputError(ValueError):
    """An impossible simulation request: the message says what is wrong and how to fix it."""
