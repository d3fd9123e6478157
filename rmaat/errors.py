"""Errors a user can cause in the model/training half; the CLI prints them as one line."""


class RMAATUserError(ValueError):
    """Base class: bad configuration, data or checkpoint supplied by the user."""


class ConfigError(RMAATUserError):
    """Unknown task/preset, impossible sizes, contradictory options."""


class DataError(RMAATUserError):
    """Missing or malformed data files (the message names the file and, where known, the line)."""


class CheckpointError(RMAATUserError):
    """Missing or corrupt checkpoint, or one written by a different configuration."""


class TrainingDivergedError(RMAATUserError):
    """The loss or gradients turned non-finite; nothing non-finite was applied or saved."""
