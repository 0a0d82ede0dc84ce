"""Errors that reach the user as one clear line (the CLI prints ``error: <message>`` and exits 2)."""

import warnings
from contextlib import contextmanager


class InputError(ValueError):
    """Bad user input: the message names the input, the problem and what to do."""


class QualityWarning(UserWarning):
    """A result was made but may be wrong: the message says why and what to check (the CLI prints
    ``warning: <message>``)."""


@contextmanager
def quality_warnings():
    """Collect the QualityWarnings raised inside, as messages in order (the list is filled on exit);
    other warnings pass through."""
    said: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QualityWarning)
        yield said
    for w in caught:
        if issubclass(w.category, QualityWarning):
            said.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
