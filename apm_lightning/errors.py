"""The one exception type for problems a user can fix (bad data, bad config, bad checkpoint).

The CLI prints an :class:`APMError` as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class APMError(Exception):
    """A user-facing error: the message names the problem and what to do about it."""
