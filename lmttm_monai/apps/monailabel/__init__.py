"""A MONAI Label app serving this project's bundles (``main.py`` in this folder is what MONAI Label loads).

MONAI Label runs in its own environment (docs/monailabel.md: ``.ci/label-install.sh VENV``). This module imports
no MONAI Label code: it says where the app is and how to start it, for ``python -m lmttm_monai.apps.monailabel``
and for tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["APP_DIR", "start_command"]

APP_DIR = Path(__file__).resolve().parent


def start_command(
    studies: str | os.PathLike,
    models: str = "all",
    bundles_dir: str | os.PathLike | None = None,
    host: str | None = None,
    port: int | None = None,
    launcher: Sequence[str] = ("monailabel",),
) -> list[str]:
    """The ``monailabel start_server`` command line (argv) that serves ``models`` on the images in ``studies``.

    ``launcher`` starts MONAI Label: its ``monailabel`` script runs the ``python`` first on ``PATH`` (the label
    environment, once activated); ``(PYTHON, "-m", "monailabel.main")`` names the interpreter instead.
    """
    argv = [*launcher, "start_server", "--app", str(APP_DIR), "--studies", str(studies), "--conf", "models", models]
    if bundles_dir is not None:
        argv += ["--conf", "bundles_dir", str(bundles_dir)]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    return argv
