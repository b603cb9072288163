"""Finding the error that says what went wrong in a chain of wrapped exceptions, and saying it on one line.

MONAI's config machinery and ignite re-raise the real error ``from`` their own (``Failed to instantiate component``,
``Failed to evaluate ConfigExpression``); these functions dig it out. No side effects: importing
:mod:`lmttm_monai.utils.readable_errors` is what installs them as the exception hook of a bundle run.
"""

from __future__ import annotations

import os
import sys
import traceback

__all__ = [
    "DEBUG_ENV", "QUIET_WARNINGS", "UserError", "debug_enabled", "fire_one_line", "one_line", "quiet_warnings", "root_cause"
]  # fmt: skip

DEBUG_ENV = "LMTTM_DEBUG"
# the whole lmttm_monai package: an error raised anywhere in it already says what is wrong (the package is imported
# before any of its modules, so it is in sys.modules here)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(sys.modules[__name__.partition(".")[0]].__file__))


# warnings every bundle run prints that tell a user nothing (MONAI's notice that configs are evaluated, deprecation
# notices from inside MONAI and torch); --debug / LMTTM_DEBUG=1 shows them
QUIET_WARNINGS = (
    {"message": r".*is passed to Python `eval\(\)`.*", "category": UserWarning},
    {"category": DeprecationWarning},
    {"category": FutureWarning, "module": r"(monai|torch|ignite)\..*"},
)


def quiet_warnings() -> None:
    """Hide :data:`QUIET_WARNINGS` from here on (the process's warning filters)."""
    import warnings

    for rule in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", **rule)


class UserError(Exception):
    """A mistake the user can fix, whose message already says what and how: shown without its type name."""


def debug_enabled() -> bool:
    """Whether the user asked for full tracebacks (``LMTTM_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _raised_here(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


def root_cause(error: BaseException) -> BaseException:
    """The exception that says what went wrong.

    The innermost exception of the chain raised by this package's own code when there is one: its message names
    the file and the fix, and what lies below it (a ``BadZipFile``, a ``URLError``) is what it explains. Otherwise
    the innermost exception of the chain (MONAI's and ignite's wrappers re-raise ``from`` the real error).
    """
    chain = _chain(error)
    for candidate in reversed(chain):
        if _raised_here(candidate):
            return candidate
    return chain[-1]


def one_line(error: BaseException) -> str:
    """``"<type>: <message>"`` of ``root_cause(error)`` (just the message for a :class:`UserError`), whitespace folded
    onto one line."""
    cause = root_cause(error)
    message = " ".join(str(cause).split())
    if isinstance(cause, UserError) and message:
        return message
    return f"{type(cause).__name__}: {message}" if message else type(cause).__name__


def _hash_kept(args: list[str]) -> list[str]:
    """``args`` with each value that holds a ``#`` quoted, so that fire passes it whole.

    fire reads a value as a Python literal, and in Python ``#`` starts a comment: ``--override loss#weight=None``
    would reach the command as ``"loss"``. A flag's name (``--loss#weight``) is left as it is; so is a value
    already in quotes.
    """
    kept = []
    for arg in args:
        name, sep, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
        if "#" in value and value[:1] not in ("'", '"'):
            value = repr(value)
        kept.append(f"{name}{sep}{value}" if name else value)
    return kept


def _repeated_flag(args: list[str]) -> UserError | None:
    """The error for a flag given more than once before fire's own ``--`` flags, else None.

    fire keeps only the last value of a repeated flag and says nothing: ``--override epochs=100 --override
    dataset_dir=D`` would train with the default epochs. The error shows the one flag to give instead, the values
    joined by commas (the flags that take several values take them that way).
    """
    values: dict[str, list[str]] = {}
    for i, arg in enumerate(args):
        if arg == "--":  # what follows are fire's own flags (--help, --trace)
            break
        if not arg.startswith("--") or len(arg) == 2:
            continue
        name, sep, value = arg[2:].partition("=")
        if not sep and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
        values.setdefault(name.replace("-", "_"), []).append(value)
    for name, given in values.items():
        if len(given) > 1:
            return UserError(
                f"--{name} is given {len(given)} times ({', '.join(given)}) and only the last would be used: give it "
                f"once (a flag that takes several values takes them joined by commas: --{name} {','.join(given)})"
            )
    return None


def fire_one_line(
    component: object, argv: list[str] | None, prog: str, usage_name: str | None = None, debug: bool | None = None
) -> None:
    """Run ``component`` as a command line with ``fire``; an exception ends the program with one line on stderr.

    The line is ``"<prog>: error: <one_line(error)>"``, printed last (stdout is flushed first), and the exit status
    is 1. ``usage_name`` is the name fire's help shows (default ``prog``). With ``debug`` (default:
    :func:`debug_enabled`) the exception is re-raised with its traceback. fire prints what the command returns;
    its own usage errors (``SystemExit``) pass through. A flag given twice is an error before anything runs,
    because fire would silently keep only its last value.
    """
    import sys

    import fire

    given = list(sys.argv[1:] if argv is None else argv)
    try:
        repeated = _repeated_flag(given)
        if repeated is not None:
            raise repeated
        fire.Fire(component, command=_hash_kept(given), name=usage_name or prog)
    except Exception as error:
        if debug_enabled() if debug is None else debug:
            raise
        sys.stdout.flush()
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
