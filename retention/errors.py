"""Errors a user can cause (missing or corrupt table, unknown segment count)."""


class RetentionTableError(ValueError):
    """A retention table is missing, corrupt or lacks the requested entry; the message says how to fix it."""


class OutputPathError(ValueError):
    """An output path that must not be written (a device, FIFO or directory where a file goes)."""
