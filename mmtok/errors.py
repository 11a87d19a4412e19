"""The errors mmtok raises on purpose, and what the ``mmtok`` command makes of them.

Library code raises these (they are ``ValueError`` s, so callers that catch ``ValueError`` keep
working); the command prints one line, ``mmtok <command>: <file or argument>: <what is wrong>,
<what was expected>``, and exits with :attr:`MmtokError.exit_code`: 2 for a bad argument, 1 for bad
data. ``--debug`` (or ``MMTOK_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations


class MmtokError(ValueError):
    """Base of mmtok's named errors; the message names the file or argument at fault."""

    exit_code = 1


class DataError(MmtokError):
    """A file or its contents cannot be used (a corrupt or truncated file, a wrong format, tokens a
    model cannot read): exit status 1."""


class MissingFileError(DataError, FileNotFoundError):
    """A file or folder that should be there is not."""


class UsageError(MmtokError):
    """A command-line argument or option value that cannot be used: exit status 2."""

    exit_code = 2
