"""Data lists of user images (3D volumes or 2D pictures) for inference, with bad files skipped and reported.

Every file is checked before inference starts, in two steps: its header (shape, voxel type and, for NIfTI, the
affine) without reading the voxels, so that a volume far larger than the bundle is made for is refused before it
takes memory; then its voxels, read with the reader the bundle uses (a NIfTI's with nibabel too, since SimpleITK
silently zeroes NaN voxels and reads a truncated .nii.gz), for their type, NaN/infinite values and a usable affine.
The checks (:func:`voxel_problem`, :func:`affine_problem`, :func:`size_problem`) are shared with
:class:`lmttm_monai.data.ValidateSegmentationd`, which applies them to images loaded for training and evaluation.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.transforms import LoadImage
from monai.utils import convert_data_type
from PIL import Image

from lmttm_monai.data.sitk_io import SimpleITKReader, itk_warnings_off, error_line, is_dicom_series_dir, sitk

__all__ = [
    "IMAGE_2D_SUFFIXES",
    "PICTURE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "affine_problem",
    "check_max_voxels",
    "image_datalist",
    "size_problem",
    "volume_datalist",
    "voxel_problem",
]

# 3D volumes: NIfTI and NumPy (MONAI's default readers), MetaImage and NRRD (SimpleITKReader); DICOM series come as
# folders, see image_datalist
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy", ".mha", ".mhd", ".nrrd", ".nhdr")
_SIMPLEITK_ONLY_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp")
IMAGE_2D_SUFFIXES = (*PICTURE_SUFFIXES, ".nii", ".nii.gz", ".npy")

logger = logging.getLogger(__name__)


def check_max_voxels(max_voxels: Any) -> int | None:
    """``max_voxels`` as a config gives it (an integer, a whole float such as ``1e8``, or ``None``), as an int.

    Raises ``ValueError`` for anything else, with the key's name: ``--max_voxels abc`` arrives as the string ``"abc"``.
    """
    if max_voxels is None:
        return None
    whole = isinstance(max_voxels, int) or (isinstance(max_voxels, float) and max_voxels.is_integer())
    if isinstance(max_voxels, bool) or not whole or max_voxels < 1:
        raise ValueError(
            f"max_voxels must be a positive whole number of voxels (or null for no limit), got {max_voxels!r}."
        )
    return int(max_voxels)


def size_problem(spatial_shape: Sequence[int], max_voxels: int | None = None) -> str | None:
    """Why an image of ``spatial_shape`` cannot be inferred on (no voxels, or more than ``max_voxels``), or ``None``."""
    shape = tuple(int(n) for n in spatial_shape)
    if not shape or 0 in shape:
        return f"has no voxels (spatial shape {shape})"
    voxels = math.prod(shape)
    if max_voxels is not None and voxels > max_voxels:
        return (
            f"{' x '.join(map(str, shape))} = {voxels} voxels is more than this bundle's max_voxels ({max_voxels}); "
            "crop it to the region to segment, or raise the limit with --max_voxels N "
            "(inference memory grows with the number of voxels)"
        )
    return None


def voxel_problem(array: Any) -> str | None:
    """Why the voxels of ``array`` (NumPy or torch) cannot be inferred on, or ``None``.

    They must be real numbers (bool, integer or floating point; not complex, text or Python objects), and none of
    them NaN or infinite: one NaN voxel turns every normalised voxel, and so every prediction, into NaN.
    """
    values = convert_data_type(array, np.ndarray)[0] if not isinstance(array, np.ndarray) else array
    kind = values.dtype.kind
    if kind not in "biuf":  # bool, signed and unsigned integers, floating point
        return f"has voxels of type {values.dtype}, not real numbers (expected integers or floating point)"
    if values.size == 0:
        return f"has no voxels (shape {tuple(values.shape)})"
    if kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(values.size - np.count_nonzero(finite))
            first = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), values.shape))  # first False
            return (
                f"{bad} of {values.size} voxels are NaN or infinite (the first at index {first}); "
                "replace them before inference"
            )
    return None


def affine_problem(affine: Any, spatial_dims: int = 3) -> str | None:
    """Why ``affine`` (the voxel-to-world matrix of an image with ``spatial_dims`` axes) is unusable, or ``None``.

    Reorienting and resampling (``Orientationd``, saving the segmentation in the input's space) invert it: NaN or
    infinite entries, or a singular matrix (all zero, or a zero voxel spacing), fail there with errors that do
    not name the file.
    """
    matrix = np.asarray(convert_data_type(affine, np.ndarray)[0], dtype=np.float64)
    if not np.isfinite(matrix).all():
        return "has a broken affine (voxel-to-world matrix): it holds NaN or infinite values; fix the header's geometry"
    rank = min(spatial_dims, matrix.shape[0] - 1)
    if np.linalg.matrix_rank(matrix[:rank, :rank]) < rank:
        return (
            "has a broken affine (voxel-to-world matrix): it is singular (all zero, or a zero voxel spacing); "
            "fix the header's geometry"
        )
    return None


def volume_datalist(folder: str | os.PathLike, max_voxels: int | None = None) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for every readable 3D single-channel volume in ``folder``, sorted by name.

    Each file is read once here so that an unreadable file, or one that is not a 3D volume, is skipped with a
    warning that names it, and the rest of the batch still runs. Raises ``FileNotFoundError`` when the folder
    is missing or holds no readable volume. ``max_voxels`` as in :func:`image_datalist`.
    """
    return image_datalist(folder, spatial_dims=3, max_voxels=max_voxels)


def _shape_fits(shape: tuple[int, ...], spatial_dims: int) -> bool:
    if spatial_dims == 3:
        return len(shape) == 3
    # a 2D picture: grey (H, W) or channel-last grey/RGB/RGBA (H, W, C) as the readers return it
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4))


def image_datalist(
    folder: str | os.PathLike,
    spatial_dims: int = 3,
    suffixes: Sequence[str] | None = None,
    max_voxels: int | None = None,
) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for every usable ``spatial_dims``-D image in ``folder``, sorted by name.

    3D: single-channel volumes (``.nii``, ``.nii.gz``, ``.npy``, ``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``) and, when
    ``suffixes`` is not given, DICOM series: each subfolder holding DICOM files is one item (``{"image": folder}``,
    for ``SimpleITKReader``); subfolders without DICOM are ignored like files of other types. 2D: grey or RGB
    pictures (``.png``, ``.tif``, ``.gif``, ``.jpg``, or 2D NIfTI/NumPy); ``suffixes`` narrows the file types.

    An image is skipped with a warning that names it and says why when it cannot be read (for example a folder with
    two series), has the wrong dimensionality or no voxels, has more than ``max_voxels`` voxels (``None``: no
    limit; checked from the header, before the voxels are read), holds voxels that are not real numbers or are
    NaN/infinite, or has a broken affine. Raises ``FileNotFoundError`` when the folder is missing or holds no usable
    image, ``ValueError`` for a ``spatial_dims`` other than 2 or 3 or an invalid ``max_voxels``.

    ``folder`` may also be one image file (or one DICOM series folder): the list then holds that image, and a file
    that cannot be used raises ``ValueError`` naming it instead of being skipped, since there is nothing else to run.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    max_voxels = check_max_voxels(max_voxels)
    folder = os.fspath(folder)
    dicom_folders = spatial_dims == 3 and suffixes is None
    suffixes = tuple(suffixes or (VOLUME_SUFFIXES if spatial_dims == 3 else IMAGE_2D_SUFFIXES))
    single = os.path.isfile(folder) or (dicom_folders and is_dicom_series_dir(folder))
    if single:
        if os.path.isfile(folder) and not folder.lower().endswith(suffixes):
            raise ValueError(f"{folder}: not an image type this bundle reads ({', '.join(suffixes)}).")
        problem = _problem(folder, spatial_dims, max_voxels)
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
        problem = _problem(path, spatial_dims, max_voxels)
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
            + (f"; skipped {len(skipped)} unusable file(s), see the warnings above" if skipped else "")
            + "."
        )
    if skipped:
        logger.warning("skipped %d of %d files in %s", len(skipped), len(paths), folder)
    return items


def _header(path: str) -> tuple[tuple[int, ...], np.dtype | None, np.ndarray | None] | None:
    """``(shape, voxel dtype, affine)`` of ``path`` from its header alone (``None`` entries where the header does not
    say), or ``None`` for a DICOM folder, which is only checked once read. Raises when the header is unreadable."""
    name = path.lower()
    if name.endswith(".npy"):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        return tuple(shape), dtype, None
    if name.endswith(_NIFTI_SUFFIXES):
        image = nib.load(path)  # the header only: nibabel reads the voxels when asked for them
        return tuple(image.shape), image.get_data_dtype(), image.affine
    if name.endswith(PICTURE_SUFFIXES):
        with Image.open(path) as picture:  # decodes nothing yet
            width, height = picture.size
        return (height, width), None, None
    if os.path.isdir(path):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        with itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError as e:
        raise ValueError(f"{path}: SimpleITK cannot read it: {error_line(e)}") from e  # as SimpleITKReader says it
    return tuple(reader.GetSize()), None, None


def _unreadable(path: str, error: Exception) -> str:
    """Why a reader could not read ``path``: its own message when that already names the file (SimpleITKReader's
    do; the caller adds the name again), else the error's type and message."""
    reason = " ".join(str(error).split())
    for prefix in (f"{path}: ", f"{os.path.abspath(path)}: "):
        if reason.startswith(prefix):
            return reason[len(prefix) :].rstrip(".")
    return f"cannot be read as an image ({type(error).__name__}: {reason})"


def _problem(path: str, spatial_dims: int, max_voxels: int | None = None) -> str | None:
    """Why ``path`` cannot be inferred on, or ``None`` when it can (module docstring: header first, then voxels)."""
    try:
        header = _header(path)
    except Exception as e:  # any header error means this one file is unusable
        return _unreadable(path, e)
    if header is not None:
        shape, dtype, affine = header
        # a picture's header gives (H, W) only; a NIfTI's or array's trailing axes may be channels, judged below
        problem = size_problem(shape[:spatial_dims], max_voxels) if len(shape) >= spatial_dims else None
        if problem is None and dtype is not None and dtype.kind not in "biuf":
            problem = f"has voxels of type {dtype}, not real numbers (expected integers or floating point)"
        if problem is None and affine is not None:
            problem = affine_problem(affine, spatial_dims)
        if problem:
            return problem
    # read with the reader the bundle uses: MONAI picks PIL only for a few suffixes (not .tif or .gif), so it is
    # named for every picture format; 3D files other than NumPy go through SimpleITKReader, as in the bundles'
    # inference configs (called directly rather than through LoadImage, which would retry every other reader and
    # bury its one-line error under their tracebacks)
    nifti_3d = spatial_dims == 3 and path.lower().endswith(_NIFTI_SUFFIXES)
    try:
        if nifti_3d:
            # SimpleITK's NIfTI reader (nifticlib) sets NaN and infinite voxels to 0 without a word, and reads a
            # truncated .nii.gz without error (the missing part comes out wrong): nibabel refuses the one and keeps
            # the others, so the voxels are checked as nibabel reads them, the rest as the bundle reads them
            problem = voxel_problem(np.asanyarray(nib.load(path).dataobj))
            if problem:
                return problem
        if path.lower().endswith(PICTURE_SUFFIXES):
            image = LoadImage(image_only=True, reader="PILReader")(path)
            array, affine = image, image.meta["affine"]
        elif os.path.isdir(path) or path.lower().endswith(_SIMPLEITK_ONLY_SUFFIXES) or nifti_3d:
            reader = SimpleITKReader()
            array, meta = reader.get_data(reader.read(path))
            affine = meta["affine"]
        else:
            image = LoadImage(image_only=True, dtype=None)(path)
            array, affine = image, image.meta["affine"]
    except Exception as e:  # any reader error means this one file is unusable
        return _unreadable(path, e)
    shape = tuple(array.shape)
    if not _shape_fits(shape, spatial_dims):
        kind = "3D single-channel volume" if spatial_dims == 3 else "2D grey or RGB image"
        return f"expected a {kind}, got shape {shape}"
    problem = size_problem(shape[:spatial_dims], max_voxels) or voxel_problem(array)
    return problem or affine_problem(affine, spatial_dims)
