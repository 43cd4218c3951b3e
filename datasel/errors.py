"""The one exception users see: a clear, one-line message about their input or options."""


class DataselError(Exception):
    """Bad input, options or configuration, explained in one line (no traceback in the CLI)."""
