"""Errors a user can act on.

Every error the command line turns into one line and exit status 2 derives from
:class:`UserError`; anything else is an internal error (exit status 1).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or bad usage: the message says what, where and what to do."""


class DataError(UserError):
    """A data source (CSV, YAML, folder) cannot be read as documented."""


class ImageError(UserError):
    """One image file cannot be decoded; batch jobs report it and go on."""


class ConfigError(UserError):
    """A configuration value or key is wrong."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors.

    >>> first_line(ValueError("bad value\\nmore detail")), first_line(KeyError())
    ('bad value', 'KeyError')
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
