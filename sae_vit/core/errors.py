"""The one exception type for mistakes a user can make (bad path, bad option, foreign file).

The CLI turns a :class:`SaeVitError` into one red line and exit code 2; any other exception is a bug
and stays loud (with a traceback under ``--debug``).
"""


class SaeVitError(Exception):
    """A user-caused error; the message is one sentence naming the problem and the fix."""
