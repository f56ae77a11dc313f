"""User-facing errors: the CLI prints their message alone, without a traceback."""


class TlpError(ValueError):
    """Bad input or configuration; the message names the problem and the fix."""


class MissingError(TlpError, FileNotFoundError):
    """A file or object that does not exist (its bucket does): a user error, and also a
    FileNotFoundError, so callers that treat a missing input as a rejection can catch it."""
