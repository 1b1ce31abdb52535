"""The one error type the env layer raises for a bad name, task, option or setup."""

from __future__ import annotations

from collections.abc import Iterable


class EnvError(ValueError):
    """A one-line error about an environment name, task, option or the system setup."""


def listing(names: Iterable[str], limit: int = 60) -> str:
    """Join names for a one-line error message, cut after `limit` names with a count of the rest."""
    names = list(names)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown
