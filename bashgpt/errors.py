"""The one exception type for bad input: the CLI prints its message as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user; the message names the problem and the fix."""
