"""Data lists of user volumes (NIfTI or NumPy) for inference, with bad files skipped and reported."""

from __future__ import annotations

import glob
import logging
import os

from monai.transforms import LoadImage

__all__ = ["volume_datalist", "VOLUME_SUFFIXES"]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")

logger = logging.getLogger(__name__)


def volume_datalist(folder: str | os.PathLike) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for every readable 3D single-channel volume in ``folder``, sorted by name.

    Each file is read once here so that an unreadable file, or one that is not a 3D volume, is skipped with a
    warning that names it, and the rest of the batch still runs. Raises ``FileNotFoundError`` when the folder
    is missing or holds no readable volume.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"inference folder {folder} does not exist.")
    paths = sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.endswith(VOLUME_SUFFIXES))
    loader = LoadImage(image_only=True)
    items, skipped = [], []
    for path in paths:
        try:
            shape = tuple(loader(path).shape)
        except Exception as e:  # any reader error means this one file is unusable
            skipped.append(path)
            logger.warning("skipping %s: cannot be read as a volume (%s: %s)", path, type(e).__name__, e)
            continue
        if len(shape) != 3:
            skipped.append(path)
            logger.warning("skipping %s: expected a 3D single-channel volume, got shape %s", path, shape)
            continue
        items.append({"image": path})
    if not items:
        raise FileNotFoundError(
            f"no readable 3D volume ({', '.join(VOLUME_SUFFIXES)}) in {folder}"
            + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else "")
            + "."
        )
    if skipped:
        logger.warning("skipped %d of %d files in %s", len(skipped), len(paths), folder)
    return items
