"""Data lists of user images (3D volumes or 2D pictures) for inference, with bad files skipped and reported."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence

from monai.transforms import LoadImage

from lmttm_monai.data.sitk_io import SimpleITKReader, is_dicom_series_dir

__all__ = ["IMAGE_2D_SUFFIXES", "PICTURE_SUFFIXES", "VOLUME_SUFFIXES", "image_datalist", "volume_datalist"]

# 3D volumes: NIfTI and NumPy (MONAI's default readers), MetaImage and NRRD (SimpleITKReader); DICOM series come as
# folders, see image_datalist
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy", ".mha", ".mhd", ".nrrd", ".nhdr")
_SIMPLEITK_ONLY_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
PICTURE_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp")
IMAGE_2D_SUFFIXES = (*PICTURE_SUFFIXES, ".nii", ".nii.gz", ".npy")

logger = logging.getLogger(__name__)


def volume_datalist(folder: str | os.PathLike) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for every readable 3D single-channel volume in ``folder``, sorted by name.

    Each file is read once here so that an unreadable file, or one that is not a 3D volume, is skipped with a
    warning that names it, and the rest of the batch still runs. Raises ``FileNotFoundError`` when the folder
    is missing or holds no readable volume.
    """
    return image_datalist(folder, spatial_dims=3)


def _shape_fits(shape: tuple[int, ...], spatial_dims: int) -> bool:
    if spatial_dims == 3:
        return len(shape) == 3
    # a 2D picture: grey (H, W) or channel-last grey/RGB/RGBA (H, W, C) as the readers return it
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4))


def image_datalist(
    folder: str | os.PathLike, spatial_dims: int = 3, suffixes: Sequence[str] | None = None
) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for every readable ``spatial_dims``-D image in ``folder``, sorted by name.

    3D: single-channel volumes (``.nii``, ``.nii.gz``, ``.npy``, ``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``) and, when
    ``suffixes`` is not given, DICOM series: each subfolder holding DICOM files is one item (``{"image": folder}``,
    for ``SimpleITKReader``); subfolders without DICOM are ignored like files of other types. 2D: grey or RGB
    pictures (``.png``, ``.tif``, ``.gif``, ``.jpg``, or 2D NIfTI/NumPy); ``suffixes`` narrows the file types. An
    unreadable file or series (for example a folder with two series), or one of the wrong dimensionality, is skipped
    with a warning that names it. Raises ``FileNotFoundError`` when the folder is missing or holds no usable
    image, ``ValueError`` for a ``spatial_dims`` other than 2 or 3.

    ``folder`` may also be one image file (or one DICOM series folder): the list then holds that image, and a file
    that cannot be used raises ``ValueError`` naming it instead of being skipped, since there is nothing else to run.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    folder = os.fspath(folder)
    dicom_folders = spatial_dims == 3 and suffixes is None
    suffixes = tuple(suffixes or (VOLUME_SUFFIXES if spatial_dims == 3 else IMAGE_2D_SUFFIXES))
    single = os.path.isfile(folder) or (dicom_folders and is_dicom_series_dir(folder))
    if single:
        if os.path.isfile(folder) and not folder.lower().endswith(suffixes):
            raise ValueError(f"{folder}: not an image type this bundle reads ({', '.join(suffixes)}).")
        problem = _problem(folder, spatial_dims)
        if problem:
            raise ValueError(f"{folder}: {problem}.")
        return [{"image": folder}]
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"inference input {folder} does not exist (give a folder or one image file).")
    paths = sorted(
        p
        for p in glob.glob(os.path.join(folder, "*"))
        if (os.path.isfile(p) and p.lower().endswith(suffixes)) or (dicom_folders and is_dicom_series_dir(p))
    )
    items, skipped = [], []
    for path in paths:
        problem = _problem(path, spatial_dims)
        if problem:
            skipped.append(path)
            logger.warning("skipping %s: %s", path, problem)
            continue
        items.append({"image": path})
    if not items:
        raise FileNotFoundError(
            f"no readable {'3D volume' if spatial_dims == 3 else '2D image'} ({', '.join(suffixes)}"
            + (", or DICOM series folder" if dicom_folders else "")
            + f") in {folder}"
            + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else "")
            + "."
        )
    if skipped:
        logger.warning("skipped %d of %d files in %s", len(skipped), len(paths), folder)
    return items


def _problem(path: str, spatial_dims: int) -> str | None:
    """Why ``path`` cannot be inferred on (it is read once), or ``None`` when it can."""
    # MONAI picks PIL only for a few suffixes (not .tif or .gif); name it for every picture format. NIfTI and NumPy
    # keep MONAI's default readers; MetaImage, NRRD and DICOM folders need SimpleITK, which MONAI does not pick itself
    # (called directly rather than through LoadImage, which would retry every other reader and bury its one-line
    # error under their tracebacks)
    try:
        if path.lower().endswith(PICTURE_SUFFIXES):
            shape = tuple(LoadImage(image_only=True, reader="PILReader")(path).shape)
        elif os.path.isdir(path) or path.lower().endswith(_SIMPLEITK_ONLY_SUFFIXES):
            reader = SimpleITKReader()
            shape = tuple(reader.get_data(reader.read(path))[0].shape)
        else:
            shape = tuple(LoadImage(image_only=True)(path).shape)
    except Exception as e:  # any reader error means this one file is unusable
        return f"cannot be read as an image ({type(e).__name__}: {e})"
    if not _shape_fits(shape, spatial_dims):
        kind = "3D single-channel volume" if spatial_dims == 3 else "2D grey or RGB image"
        return f"expected a {kind}, got shape {shape}"
    return None
