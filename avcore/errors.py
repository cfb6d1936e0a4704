"""Errors that mean "the user's input is wrong", as opposed to a bug.

The ``avcall`` command prints a :class:`UsageError` as one line
(``avcall COMMAND: error: MESSAGE``) and exits with status 2; every other
exception is a bug and keeps its traceback. Raise it (or a subclass) for a bad
argument value, a bad path, a missing model, an address that cannot be used.
It subclasses :class:`ValueError`, so library callers that catch ValueError
keep working.
"""
from __future__ import annotations


class UsageError(ValueError):
    """A bad input a user can fix; its message is the whole explanation (one line)."""
