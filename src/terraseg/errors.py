"""Exception types for errors a user can fix (bad files, bad names, bad configs).

The CLI turns any :class:`TerrasegError` into one clear message and a non-zero exit code instead
of a traceback. They also derive from :class:`ValueError` so generic callers can catch them.
"""

from __future__ import annotations


class TerrasegError(ValueError):
    """Base class of errors caused by user input (files, names, options)."""


class DataError(TerrasegError):
    """A data file is missing, unreadable or inconsistent (shape, ids, colours, pairing)."""


class ConfigError(TerrasegError):
    """A configuration, ontology or mapping definition is invalid or names something unknown."""
