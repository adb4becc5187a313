"""The project's one user-error type.

A `UserError` is bad input from the person running the code (an unknown
architecture, an input too small, a missing file). It names the value received
and what is allowed. The CLI prints it as one line and exits with code 2; any
other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user; the message is one line and says what is allowed."""
