"""Readable errors for bundle runs: the root cause as the last line, not MONAI's wrapper.

A mistake in a bundle's data or config surfaces, through ``python -m monai.bundle``, as a traceback of 60-130 lines
ending in MONAI's generic ``RuntimeError: Failed to instantiate component ...`` or ``Failed to evaluate
ConfigExpression``; the message that says what is wrong (a missing file, an unknown dataset, a batch size of 0) is
buried in the middle. Importing this module (the bundle configs list ``"$import lmttm_monai.utils.readable_errors"`` in
their ``imports``, which MONAI executes while it parses the config) installs an exception hook that prints only

    error: <root cause's type>: <its message, on one line>

as the last line, with a hint above it (the root cause as :func:`lmttm_monai.utils.errors.root_cause` finds it).
``LMTTM_DEBUG=1`` keeps Python's full traceback. ``lmttm-monai`` uses the same functions for its own errors
(``--debug`` there).

It also hides, from that point of the run on, the warnings that tell a user nothing
(:data:`lmttm_monai.utils.errors.QUIET_WARNINGS`: deprecation notices from inside MONAI and torch), unless
``LMTTM_DEBUG=1``. MONAI's security notice that a config's expressions are evaluated is printed once, by MONAI,
before any config is read: no project code runs before it, and the project does not hide a security notice on
MONAI's own command line (``lmttm-monai``, which runs only this project's configs, does).
"""

from __future__ import annotations

import sys
from types import TracebackType

from lmttm_monai.utils.errors import DEBUG_ENV, debug_enabled, one_line, quiet_warnings

__all__ = ["install"]


def _excepthook(
    exc_type: type[BaseException], error: BaseException, tb: TracebackType | None, *, previous=sys.__excepthook__
) -> None:
    if debug_enabled() or not isinstance(error, Exception):  # Ctrl-C and SystemExit keep Python's own handling
        previous(exc_type, error, tb)
        return
    print(f"(set {DEBUG_ENV}=1 for the full traceback)", file=sys.stderr)
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)


def install() -> None:
    """Install the hook, once, and only over Python's default one (never over a hook someone else set); hide the
    uninformative warnings unless debugging."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
    if not debug_enabled():
        quiet_warnings()


install()
