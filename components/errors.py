"""User-facing errors: the CLI prints their message alone, without a traceback."""


class TlpError(ValueError):
    """Bad input or configuration; the message names the problem and the fix."""
