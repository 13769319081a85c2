"""Errors that mean the user's input is wrong: the CLI prints them on one line and exits 2."""


class UsageError(ValueError):
    """Bad input: a malformed config, a missing checkpoint, an unknown name."""
