"""A MONAI Label app serving this project's bundles (``main.py`` in this folder is what MONAI Label loads).

MONAI Label runs in its own environment (docs/monailabel.md: ``.ci/label-install.sh VENV``). This module imports
no MONAI Label code: it says where the app is and how to start it, for ``python -m lmttm_monai.apps.monailabel``
and for tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["APP_DIR", "IMAGE_PATTERNS", "check_studies", "start_command"]

APP_DIR = Path(__file__).resolve().parent
# the files MONAI Label's local datastore serves (monailabel.config settings.MONAI_LABEL_DATASTORE_FILE_EXT, 0.8.5)
IMAGE_PATTERNS = ("*.nii.gz", "*.nii", "*.nrrd", "*.jpg", "*.png", "*.tif", "*.svs")


def _images(folder: Path) -> list[Path]:
    return sorted({p for pattern in IMAGE_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def check_studies(studies: str | os.PathLike) -> Path:
    """The studies folder, if MONAI Label would serve images from it; otherwise a ``ValueError`` in one line.

    MONAI Label serves the images at the top of the folder only: a Medical Segmentation Decathlon task folder (images
    under ``imagesTr/``) would be served with no image and no warning, so it is refused with the folder to give.
    """
    folder = Path(studies).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--studies {folder} is not a folder")
    if _images(folder):
        return folder
    decathlon = folder / "imagesTr"
    if decathlon.is_dir() and _images(decathlon):
        raise ValueError(
            f"--studies {folder} holds no image at its top but {len(_images(decathlon))} in imagesTr/ (a Decathlon "
            f"task folder; MONAI Label serves only the top): pass --studies {decathlon}"
        )
    raise ValueError(f"--studies {folder} holds no image MONAI Label serves ({', '.join(IMAGE_PATTERNS)})")


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
