"""The package version: its own module, so that anything can import it without importing
the package (and so nothing imports upward)."""

__version__ = "0.1.0"
