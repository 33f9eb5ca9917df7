"""One exception type for every failure a user can act on.

The CLI prints its message as a single line and exits non-zero, so each
message must say what went wrong and what to do about it.
"""


class TapmigError(Exception):
    """A failure with a one-line, actionable message."""
