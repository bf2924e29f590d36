"""The exception types that end a command with one line instead of a traceback.

The command line catches them and prints ``error: <message>`` on one line: ``InputError`` (and its
``StoreError``) with exit code 2, ``StoreIOError`` with exit code 1. Anything else is a bug and keeps its
traceback.
"""


class InputError(Exception):
    """Bad input (experiment file, paths, model, ablation syntax...). The message names what is wrong."""


class StoreError(InputError):
    """The store path is unusable as a store (a directory, not writable, another application's file, a
    newer schema...). Raised before anything is written to it."""


class StoreIOError(Exception):
    """Reading or writing the store failed for a reason outside the input (disk full, I/O error). What was
    committed before stays; running the same command again once the cause is fixed resumes."""
