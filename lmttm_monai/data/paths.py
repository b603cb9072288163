"""The one rule for where a bundle looks for its data when ``dataset_dir`` is not given.

Every bundle's default ``dataset_dir`` is ``$MONAI_DATA_DIRECTORY/<folder>``, with ``MONAI_DATA_DIRECTORY``
(the variable MONAI's own tutorials read) defaulting to ``~/data``. The folders are ``medmnist`` (the
``.npz`` files, medmnist's names), ``Task04_Hippocampus`` (the Decathlon layout) and ``DRIVE``. So
``export MONAI_DATA_DIRECTORY=/path/to/data`` points all bundles at once, and ``--dataset_dir`` one run.
"""

from __future__ import annotations

import os

__all__ = ["DATA_ENV", "DEFAULT_DATA_ROOT", "data_root", "default_dataset_dir"]

DATA_ENV = "MONAI_DATA_DIRECTORY"
DEFAULT_DATA_ROOT = "~/data"


def data_root() -> str:
    """``$MONAI_DATA_DIRECTORY`` when set (and not empty), otherwise ``~/data``; ``~`` expanded."""
    return os.path.expanduser(os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)


def default_dataset_dir(folder: str = "medmnist") -> str:
    """``<data_root()>/<folder>``: the default ``dataset_dir`` of every bundle (see the module docstring)."""
    if not folder or os.path.isabs(folder) or ".." in folder.split(os.sep):
        raise ValueError(f"default_dataset_dir expects a folder name such as 'medmnist', got {folder!r}.")
    return os.path.join(data_root(), folder)
