"""The one exception type that means "the user gave us something we cannot use"."""


class UserError(ValueError):
    """Bad input from a user: the CLI prints the message as one sentence and exits with status 2.

    The message must name the problem and, where there is one, the fix.
    """
