"""Outputs of a bundle run are never replaced unasked.

Every bundle config starts its run (``initialize``) with :func:`refuse_overwrite` on the files that run writes:
the checkpoint for training, the metrics and prediction files for evaluation and inference. When one of them
exists, the run stops before any work with a one-line message that names the file and the two ways on
(``--overwrite true``, or another ``--output_dir`` / ``--ckpt_dir``). The check is up front rather than in each
saver because a training run that only fails when it saves, hours later, loses the hours.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator, Sequence

from lmttm_monai.utils.errors import UserError

__all__ = ["OutputExistsError", "as_bool", "atomic_path", "existing_outputs", "refuse_overwrite"]

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def as_bool(value: object, key: str) -> bool:
    """A yes/no config key as given on a command line: ``True``/``False``, or ``true``/``false``, ``1``/``0``, ...

    ``python -m monai.bundle`` passes ``--overwrite true`` as the string ``"true"`` (only ``True`` becomes a bool),
    and the string ``"false"`` would count as true in Python; so the strings are read here, and anything else is
    refused with the key's name.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise UserError(f"{key} must be true or false, got {value!r}.")


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path next to ``path`` to write to; renamed over ``path`` when the block ends without error.

    The temporary file is in the same folder (a rename within one file system is atomic), flushed to disk before
    the rename, and removed if the block fails; so ``path`` only ever holds a complete file. Its permissions are
    those a plain ``open`` gives (``0o666`` less the umask), not ``mkstemp``'s owner-only ``0o600``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def refuse_overwrite(
    patterns: Sequence[str] | str, overwrite: bool | str = False, resume: bool | str = False, resumable: bool = False
) -> None:
    """Raise :class:`OutputExistsError` when a file in ``patterns`` exists, unless ``overwrite``.

    Args:
        patterns: the files the run will write (paths, or ``glob`` patterns such as ``eval/*_seg.*``).
        overwrite: the bundle's ``overwrite`` key: ``True`` lets the run replace them.
        resume: the configs' ``resume`` key: continuing a run means keeping its files, so they may exist.
        resumable: the run can complete what an earlier one left (per-case inference): say so in the message.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if as_bool(overwrite, "overwrite") or as_bool(resume, "resume"):
        return
    found = existing_outputs(patterns)
    if not found:
        return
    checkpoints = [path for path in found if os.path.basename(path) == "checkpoint.pt"]
    way = "pass --overwrite true to replace it"
    if checkpoints:  # an earlier training run's full state: the first way on is to continue it
        found = checkpoints + [path for path in found if path not in checkpoints]
        way = "pass --resume true to continue that training, --overwrite true to start it again"
    elif resumable:
        way = "pass --resume true to infer only the inputs without one, --overwrite true to replace them"
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise OutputExistsError(
        f"{found[0]}{more} exists, written by an earlier run; {way}, "
        "or another --output_dir (outputs) / --ckpt_dir (checkpoint) to write elsewhere."
    )
