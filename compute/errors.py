"""The exception types the command line turns into one line ``error: <message>``.

``InputError`` means the user's input is wrong: exit code 2, nothing written. ``RunError`` means a run
stopped part way for a reason outside the input (a decode worker died, the store could not be written):
exit code 1, what was committed is kept and the same command resumes. Anything else is a bug and keeps
its traceback.
"""


class InputError(Exception):
    """Bad input (experiment file, paths, model, ablation syntax...). The message names what is wrong."""


class RunError(RuntimeError):
    """A run stopped part way; the message says why and that rerunning resumes."""
