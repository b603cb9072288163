"""Outputs of a bundle run are never replaced unasked.

Every bundle config starts its run (``initialize``) with :func:`refuse_overwrite` on the files that run writes:
the checkpoint for training, the metrics and prediction files for evaluation and inference. When one of them
exists, the run stops before any work with a one-line message that names the file and the two ways on
(``--overwrite true``, or another ``--output_dir`` / ``--ckpt_dir``). The check is up front rather than in each
saver because a training run that only fails when it saves, hours later, loses the hours.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from lmttm_monai.errors import UserError

__all__ = ["OutputExistsError", "existing_outputs", "refuse_overwrite"]


class OutputExistsError(UserError, FileExistsError):
    """A run would replace the output of an earlier run and the user did not ask for it."""


def existing_outputs(patterns: Sequence[str]) -> list[str]:
    """The files that exist among ``patterns`` (paths or ``glob`` patterns), sorted, without duplicates."""
    found: set[str] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if glob.has_magic(pattern):
            found.update(path for path in glob.glob(pattern, recursive=True) if os.path.isfile(path))
        elif os.path.isfile(pattern):
            found.add(pattern)
    return sorted(found)


def refuse_overwrite(patterns: Sequence[str] | str, overwrite: bool = False) -> None:
    """Raise :class:`OutputExistsError` when a file in ``patterns`` exists, unless ``overwrite``.

    Args:
        patterns: the files the run will write (paths, or ``glob`` patterns such as ``eval/*_seg.*``).
        overwrite: the bundle's ``overwrite`` key: ``True`` lets the run replace them.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(overwrite, bool):
        raise UserError(f"overwrite must be true or false, got {overwrite!r}.")
    if overwrite:
        return
    found = existing_outputs(patterns)
    if not found:
        return
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise OutputExistsError(
        f"{found[0]}{more} exists, written by an earlier run; pass --overwrite true to replace it, "
        "or another --output_dir (outputs) / --ckpt_dir (checkpoint) to write elsewhere."
    )
