"""The one exception type that means "the user's input is wrong".

The command line catches it, prints ``error: <message>`` on one line and exits with code 2;
anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input (experiment file, paths, model, ablation syntax...). The message names what is wrong."""
