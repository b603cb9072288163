"""Small helpers shared by the command lines."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["comma_list"]


def comma_list(value: str | int | Iterable | None) -> list[str]:
    """The names of a comma-separated command-line list, stripped, blanks dropped, order kept.

    ``"a, b,"`` -> ``["a", "b"]``. fire hands ``--seeds 0,1`` over as the tuple ``(0, 1)`` and ``--seeds 0`` as the
    int ``0``, so a sequence or a scalar is read item by item the same way; ``None`` is the empty list.
    """
    if value is None:
        return []
    if isinstance(value, str):
        items: Iterable = value.split(",")
    elif isinstance(value, Iterable):
        items = [part for item in value for part in str(item).split(",")]
    else:
        items = [value]
    return [str(item).strip() for item in items if str(item).strip()]
