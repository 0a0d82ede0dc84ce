"""Errors that reach the user as one clear line (the CLI prints ``error: <message>`` and exits 2)."""


class InputError(ValueError):
    """Bad user input: the message names the input, the problem and what to do."""


class QualityWarning(UserWarning):
    """A result was made but may be wrong: the message says why and what to check (the CLI prints
    ``warning: <message>``)."""
