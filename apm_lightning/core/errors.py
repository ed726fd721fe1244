"""The one exception type for problems a user can fix (bad data, bad config, bad checkpoint).

The CLI prints an :class:`APMError` as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class APMError(Exception):
    """A user-facing error: the message names the problem and what to do about it."""


def user_error(err: BaseException | None, kind: type = APMError) -> BaseException | None:
    """The first exception of type ``kind`` in ``err``'s chain of causes, or None: libraries
    (Lightning, jsonargparse) wrap an :class:`APMError` raised inside a hook in their own."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
