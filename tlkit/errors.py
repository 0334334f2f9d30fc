"""The one exception type for mistakes a user can fix (bad path, bad recipe, bad file)."""


class TlkitError(Exception):
    """A user-facing error: the CLI prints its message alone, without a traceback."""
