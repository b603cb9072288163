"""Small helpers shared by the command lines."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["comma_list"]


def comma_list(value: str | int | Iterable | None) -> list[str]:
    """The names of a comma-separated command-line list, stripped, blanks dropped, order kept.

    ``"a, b,"`` -> ``["a", "b"]``. fire hands ``--seeds 0,1`` over already split, as the tuple ``(0, 1)``, and
    ``--seeds 0`` as the int ``0``: a sequence gives its items and a scalar itself, not split again, so a name
    that holds a comma (the arm "U-Net, 3 slices" that a results folder's comparison.json lists) stays whole;
    ``None`` is the empty list.
    """
    if value is None:
        return []
    if isinstance(value, str):
        items: Iterable = value.split(",")
    elif isinstance(value, Iterable):
        items = value
    else:
        items = [value]
    return [str(item).strip() for item in items if str(item).strip()]
