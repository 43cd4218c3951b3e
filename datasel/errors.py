"""The one exception users see: a clear, one-line message about their input or options."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


class DataselError(Exception):
    """Bad input, options or configuration, explained in one line (no traceback in the CLI)."""


def fail(message: str) -> typer.Exit:
    """Print `error: <message>` and return the exit (status 2) a CLI command raises."""
    import typer

    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


class MissingExtra(DataselError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it.

    An ImportError too, so that library callers that catch ImportError still do."""


# the modules each optional extra brings (see pyproject.toml), as imported
EXTRAS = {
    "lm": ("torch", "transformers"),
    "embed": ("torch", "sentence_transformers"),
    "fasttext": ("fasttext",),
    "ray": ("ray",),
    "report": ("matplotlib",),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtra, before any work, when a module of `extra` is not installed
    (a cheap look: nothing is imported). `what` says who needs it, e.g. "score ppl"."""
    missing = [m for m in (modules or EXTRAS[extra]) if not _installed(m)]
    if missing:
        raise MissingExtra(
            f"{what} needs {', '.join(missing)}, not installed: pip install 'datasel[{extra}]'"
        )


def import_extra(module: str, extra: str, what: str):
    """Import an optional module, or raise MissingExtra naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"{what} needs {module.split('.')[0]}, not installed: pip install 'datasel[{extra}]'"
        ) from None
