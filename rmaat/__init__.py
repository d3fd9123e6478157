"""rmaat."""
