"""The exception types the command line turns into one line ``error: <message>``.

``InputError`` means the user's input is wrong: exit code 2, nothing written. ``RunError`` means a run
stopped part way for a reason outside the input (a decode worker died, the store could not be written):
exit code 1, what was committed is kept and the same command resumes (``ModelOutputError``, non-finite
results part way, is one too). Anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input (experiment file, paths, model, ablation syntax...). The message names what is wrong."""


class RunError(RuntimeError):
    """A run stopped part way; the message says why and that rerunning resumes."""


class StoreError(InputError):
    """The store path is unusable as a store (a directory, not writable, another application's file, a
    newer schema...). Raised before anything is written to it: exit code 2."""


class StoreIOError(RunError):
    """Reading or writing the store failed for a reason outside the input (disk full, a file system gone
    read-only, another process keeping it busy): exit code 1. What was committed stays valid; running the
    same command again once the cause is fixed resumes."""


class ModelOutputError(RunError):
    """The model gave NaN or infinite values part way through a run (its image embeddings under some
    ablation), past the checks made before anything was written: exit code 1. That batch is not written;
    what was committed before stays, and the run stays incomplete until the model, its dtype or the ablation
    changes (rerunning stops at the same batch)."""
