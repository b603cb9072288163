"""Clinical image files through SimpleITK: a MONAI reader and writer that keep each image's geometry.

- ``SimpleITKReader`` reads NIfTI, MetaImage (``.mha``/``.mhd``), NRRD (``.nrrd``/``.nhdr``) and DICOM series
  folders. It returns arrays in the same axis order, with the same RAS ``affine``, as MONAI's ``NibabelReader``
  gives for a NIfTI file, so a bundle predicts the same whichever of the two readers loaded the file. Use it from a
  bundle config as ``LoadImaged(reader="lmttm_monai.data.SimpleITKReader")``.
- ``SimpleITKWriter`` writes a channel-first array back with the origin, spacing and direction that its RAS affine
  describes. Importing ``lmttm_monai`` registers it with MONAI for ``.mha``, ``.mhd``, ``.nrrd`` and ``.nhdr``, so
  ``SaveImage(output_ext=".mha")`` writes with it.
- ``output_ext_for`` and ``SaveLikeInputd`` write each segmentation in its input's format family.

ITK keeps geometry in LPS (x grows towards the patient's left, y towards posterior); MONAI's ``affine``, like
NIfTI's, is RAS. Going between the two negates the first two rows of the affine (``orientation_ras_lps``).
"""

from __future__ import annotations

import locale
import os
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor, PathLike
from monai.data import ImageReader, ImageWriter, MetaTensor, register_writer, resolve_writer
from monai.data.image_writer import SUPPORTED_WRITERS
from monai.data.utils import affine_to_spacing, is_no_channel, orientation_ras_lps, to_affine_nd
from monai.transforms import MapTransform, SaveImage
from monai.utils import (
    ImageMetaKey,
    MetaKeys,
    SpaceKeys,
    convert_data_type,
    ensure_tuple,
    get_equivalent_dtype,
    optional_import,
)

from lmttm_monai.data.saving import AtomicSaveImage, output_ext_for

# imported on first use, so that training and evaluation, which read NIfTI with nibabel, run without SimpleITK
sitk, _ = optional_import("SimpleITK")

__all__ = [
    "SIMPLEITK_READ_SUFFIXES",
    "SIMPLEITK_WRITE_SUFFIXES",
    "SaveLikeInputd",
    "SimpleITKImage",
    "SimpleITKReader",
    "SimpleITKWriter",
    "is_dicom_series_dir",
    "error_line",
    "itk_warnings_off",
    "output_ext_for",
]

SIMPLEITK_READ_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
# the suffixes MONAI resolves to SimpleITKWriter; NIfTI keeps MONAI's NibabelWriter (SimpleITKWriter can be named
# explicitly with SaveImage(writer=...) for it)
SIMPLEITK_WRITE_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")


def error_line(error: Exception) -> str:
    """What SimpleITK said, on one line: its message without the C++ source location and object addresses."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # the first line is "Exception thrown in SimpleITK <call>: <source file>:<line>:" -- where it failed, not why
    if len(lines) > 1 and lines[0].startswith("Exception thrown in SimpleITK"):
        lines = lines[1:]
    text = re.sub(r"\(0x[0-9a-fA-F]+\)", "", " ".join(lines))
    text = re.sub(r"(ITK ERROR|sitk::ERROR):\s*", "", text)
    return text.strip() or type(error).__name__


@contextmanager
def itk_warnings_off() -> Iterator[None]:
    """Silence ITK's warnings (printed straight to stderr) for a probe whose failure is reported by the caller."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


@contextmanager
def _locale_kept() -> Iterator[None]:
    """Undo a change of the process locale by ITK/GDCM.

    Writing DICOM with an Image Orientation (Patient) tag leaves LC_CTYPE at "C" (seen with SimpleITK 2.5.7), which
    turns Python's default text encoding into ASCII for the rest of the process (``open()``, ``subprocess`` output).
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != saved:
            locale.setlocale(locale.LC_ALL, saved)


def _dicom_series_ids(folder: str) -> tuple[str, ...]:
    with itk_warnings_off():  # GDCM warns "No Series were found" for every folder without DICOM
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))


def is_dicom_series_dir(path: PathLike) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM series (files directly in it, not in subfolders)."""
    path = os.fspath(path)
    return os.path.isdir(path) and bool(_dicom_series_ids(path))


@dataclass
class SimpleITKImage:
    """What ``SimpleITKReader.read`` returns for each input: the SimpleITK image and the file or folder it came from."""

    image: sitk.Image
    filename: str


class SimpleITKReader(ImageReader):
    """Load NIfTI, MetaImage, NRRD and DICOM series folders with SimpleITK, the way MONAI's readers load images.

    ``get_data`` returns the voxel array in ITK index order, ``(x, y, z)`` for a 3D scalar image, which is NIfTI's
    ``(i, j, k)`` order: on a NIfTI file the array and the RAS ``affine`` equal ``NibabelReader``'s (unlike
    ``ITKReader(reverse_indexing=True)``, there is no reversed order: its affine would not describe the array).
    Vector pixels (for example RGB) come last: ``(x, y, z, C)``, with ``original_channel_dim == -1``. The meta dict
    has MONAI's keys (``affine``, ``original_affine``, ``spatial_shape``, ``original_channel_dim``, ``space``,
    ``filename_or_obj``) plus the geometry as SimpleITK read it, in ITK's LPS convention: ``spacing``, ``origin`` and
    ``direction`` (a ``(D, D)`` matrix whose columns are the directions of the array axes).

    A folder is read as one DICOM series (slices sorted by position along the slice normal by GDCM). A folder with
    several series is an error unless ``series_id`` names one. As with MONAI's readers, a list of paths is read as one
    multi-channel image: they must share their grid, and are stacked on a new first axis (scalar images) or joined on
    the channel axis (vector images).

    Args:
        channel_dim: the channel axis of the returned array, for ``EnsureChannelFirst``; ``None`` means "none"
            for scalar images and ``-1`` for vector pixels. ``"no_channel"`` is stored as ``nan``, as MONAI does.
        series_id: the DICOM Series Instance UID to read from a folder holding several series.
        affine_lps_to_ras: convert the affine from ITK's LPS to RAS (``True``, as ``NibabelReader``); with ``False``
            the affine stays LPS and ``space`` says so.
        kwargs: passed to ``SimpleITK.ReadImage`` (``outputPixelType``, ``imageIO``).

    Raises (from ``read``):
        FileNotFoundError: the file or folder does not exist.
        ValueError: SimpleITK cannot read it (the message names it and says why, on one line); a folder holds no
            DICOM series, several without ``series_id``, or not the one ``series_id`` names.
    """

    def __init__(
        self,
        channel_dim: str | int | None = None,
        series_id: str | None = None,
        affine_lps_to_ras: bool = True,
        **kwargs,
    ) -> None:
        super().__init__()
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim
        self.series_id = series_id
        self.affine_lps_to_ras = affine_lps_to_ras
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every name is a NIfTI, MetaImage or NRRD file name, or a folder (a DICOM series)."""
        return all(
            os.path.isdir(name) or os.fspath(name).lower().endswith(SIMPLEITK_READ_SUFFIXES)
            for name in ensure_tuple(filename)
        )

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> SimpleITKImage | list[SimpleITKImage]:
        """Read one file or DICOM folder (a ``SimpleITKImage``), or a list of them (a list, stacked by ``get_data``).

        ``kwargs`` override the constructor's arguments for ``SimpleITK.ReadImage``.
        """
        names = ensure_tuple(data)
        options = {**self.kwargs, **kwargs}
        images = [self._read_one(os.fspath(name), options) for name in names]
        return images if len(names) > 1 else images[0]

    def _dicom_files(self, folder: str) -> list[str]:
        ids = _dicom_series_ids(folder)
        if not ids:
            raise ValueError(f"{folder}: no DICOM series in this folder (a folder is read as one DICOM series).")
        if self.series_id is not None:
            if self.series_id not in ids:
                raise ValueError(f"{folder}: no DICOM series {self.series_id!r} here; it holds {', '.join(ids)}.")
            series = self.series_id
        elif len(ids) > 1:
            raise ValueError(
                f"{folder}: holds {len(ids)} DICOM series ({', '.join(ids)}); "
                "choose one with SimpleITKReader(series_id=...)."
            )
        else:
            series = ids[0]
        return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series))

    def _read_one(self, path: str, options: dict) -> SimpleITKImage:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or DICOM folder.")
        source = self._dicom_files(path) if os.path.isdir(path) else path
        try:
            with _locale_kept():
                image = sitk.ReadImage(source, **options)
        except RuntimeError as e:
            raise ValueError(f"{path}: SimpleITK cannot read it: {error_line(e)}") from e
        return SimpleITKImage(image, path)

    def get_data(self, img: SimpleITKImage | sitk.Image | Sequence) -> tuple[np.ndarray, dict]:
        """The array and MONAI meta dict of ``img`` (what ``read`` returned; a bare ``sitk.Image`` works too).

        Returns:
            ``(array, meta)``: ``array`` is ``(x, y[, z])`` for a scalar image, ``(x, y[, z], C)`` for vector pixels,
            ``(N, x, y[, z])`` for a list of ``N`` scalar images; ``meta`` as described in the class docstring.
        """
        items = list(img) if isinstance(img, (list, tuple)) else [img]
        pairs = [self._array_and_meta(item) for item in items]
        array, meta = pairs[0]
        if len(pairs) == 1:
            return array, meta
        for other, other_meta in pairs[1:]:
            if tuple(other_meta[MetaKeys.SPATIAL_SHAPE]) != tuple(meta[MetaKeys.SPATIAL_SHAPE]) or not np.allclose(
                other_meta[MetaKeys.AFFINE], meta[MetaKeys.AFFINE], atol=1e-5
            ):
                raise ValueError(
                    f"{other_meta.get(ImageMetaKey.FILENAME_OR_OBJ)}: its grid (shape "
                    f"{tuple(other_meta[MetaKeys.SPATIAL_SHAPE])}) differs from that of "
                    f"{meta.get(ImageMetaKey.FILENAME_OR_OBJ)} (shape {tuple(meta[MetaKeys.SPATIAL_SHAPE])}); "
                    "images read together become channels of one image and must share their grid."
                )
        arrays = [a for a, _ in pairs]
        if is_no_channel(meta[MetaKeys.ORIGINAL_CHANNEL_DIM]):
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0  # scalar images become channels on a new first axis
            return np.stack(arrays, axis=0), meta
        return np.concatenate(arrays, axis=int(meta[MetaKeys.ORIGINAL_CHANNEL_DIM])), meta

    def _array_and_meta(self, item: SimpleITKImage | sitk.Image) -> tuple[np.ndarray, dict]:
        image, filename = (item.image, item.filename) if isinstance(item, SimpleITKImage) else (item, None)
        dim = image.GetDimension()
        rank = min(dim, 3)  # MONAI's affines describe at most three spatial axes; later ones (time) ride along
        array = sitk.GetArrayFromImage(image)  # reversed index order: (z, y, x[, C])
        vector = array.ndim > dim
        array = array.transpose([*range(dim)[::-1], *([dim] if vector else [])])
        spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
        origin = np.asarray(image.GetOrigin(), dtype=np.float64)
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
        affine = np.eye(rank + 1)
        affine[:rank, :rank] = direction[:rank, :rank] @ np.diag(spacing[:rank])
        affine[:rank, rank] = origin[:rank]
        if self.affine_lps_to_ras:
            affine = orientation_ras_lps(affine)
        size = list(image.GetSize())
        if isinstance(self.channel_dim, int) and not vector:
            size.pop(self.channel_dim)  # a scalar axis the caller declared to be the channels is not spatial
        spatial_shape = np.asarray(size[:rank])
        if self.channel_dim is None:
            channel_dim: Any = float("nan") if array.ndim == len(spatial_shape) else -1
        else:
            channel_dim = self.channel_dim
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: spatial_shape,
            MetaKeys.ORIGINAL_CHANNEL_DIM: channel_dim,
            MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
            "spacing": spacing,
            "origin": origin,
            "direction": direction,
        }
        if filename is not None:
            meta[ImageMetaKey.FILENAME_OR_OBJ] = filename
        return array, meta


class SimpleITKWriter(ImageWriter):
    """Write arrays with SimpleITK, turning MONAI's affine back into ITK origin, spacing and direction.

    Used by ``SaveImage`` for ``.mha``, ``.mhd``, ``.nrrd`` and ``.nhdr`` (registered on ``import lmttm_monai``); it
    also writes ``.nii``/``.nii.gz`` when named with ``SaveImage(writer=SimpleITKWriter)``. The written image has the
    spacing (column norms of the affine), direction (the normalised columns) and origin of the affine, converted from
    RAS to ITK's LPS, so a segmentation saved from a MetaTensor loaded by ``SimpleITKReader`` (or any MONAI reader)
    overlays its input.

    .. code-block:: python

        writer = SimpleITKWriter(output_dtype=np.uint8)
        writer.set_data_array(label, channel_dim=0)  # (1, x, y, z)
        writer.set_metadata(label.meta, resample=False)
        writer.write("case_seg.mha")

    Args:
        output_dtype: data type of the written voxels; ``None`` keeps the array's (bool is written as uint8).
        affine_lps_to_ras: whether the affine is RAS and must be converted to ITK's LPS (``True``); ``False`` when it
            is already LPS; ``None`` (default) reads it from the meta dict's ``space`` (RAS when absent).
        compression: compress the voxel data (``.mha`` zlib, ``.mhd`` a ``.zraw`` file, NRRD gzip); ``.nii.gz`` is
            always compressed.
        kwargs: kept as attributes, as MONAI's writers do (``SaveImage`` passes ``scale``, unused here).
    """

    output_dtype: DtypeLike = None
    channel_dim: int | None

    def __init__(
        self,
        output_dtype: DtypeLike = np.float32,
        affine_lps_to_ras: bool | None = None,
        compression: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            output_dtype=output_dtype,
            affine_lps_to_ras=affine_lps_to_ras,
            compression=compression,
            affine=None,
            channel_dim=0,
            **kwargs,
        )

    def set_data_array(
        self, data_array: NdarrayOrTensor, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs
    ) -> None:
        """Keep ``data_array`` as a channel-last array (``(x, y, z[, C])``); ``channel_dim=None``: it has none.

        ``kwargs``: ``spatial_ndim`` (default 3) and ``contiguous`` for ``convert_to_channel_last``.
        """
        channels = data_array.shape[channel_dim] if channel_dim is not None else 0
        self.data_obj = self.convert_to_channel_last(
            data=data_array,
            channel_dim=channel_dim,
            squeeze_end_dims=squeeze_end_dims,
            spatial_ndim=kwargs.pop("spatial_ndim", 3),
            contiguous=kwargs.pop("contiguous", True),
        )
        self.channel_dim = -1  # several channels (or one kept by squeeze_end_dims=False): ITK vector pixels
        if channels == 0 and not squeeze_end_dims:
            self.data_obj = self.data_obj[..., 0]  # the channel axis convert_to_channel_last added
        if channels == 0 or (channels == 1 and squeeze_end_dims):
            self.channel_dim = None  # a scalar image

    def set_metadata(self, meta_dict: Mapping | None = None, resample: bool = True, **options) -> None:
        """Take the affine from ``meta_dict``; with ``resample``, first resample to its ``original_affine`` and
        ``spatial_shape`` (``options``: ``mode``, ``padding_mode``, ``align_corners``, ``dtype``, as in MONAI)."""
        original_affine, affine, spatial_shape = self.get_meta_info(meta_dict)
        if self.output_dtype is None and hasattr(self.data_obj, "dtype"):
            self.output_dtype = self.data_obj.dtype
        if self.affine_lps_to_ras is None:
            self.affine_lps_to_ras = (meta_dict or {}).get(MetaKeys.SPACE, SpaceKeys.RAS) != SpaceKeys.LPS
        if not resample:
            # no resampling: write the voxels as they are, with the affine they are in
            self.affine = affine
            return
        self.data_obj, self.affine = self.resample_if_needed(
            data_array=self.data_obj,
            affine=affine,
            target_affine=original_affine,
            output_spatial_shape=spatial_shape,
            mode=options.pop("mode", "bilinear"),
            padding_mode=options.pop("padding_mode", "border"),
            align_corners=options.pop("align_corners", False),
            dtype=options.pop("dtype", np.float64),
        )

    def write(self, filename: PathLike, verbose: bool = False, **kwargs) -> None:
        """Write the image to ``filename``; its extension picks the format. ``kwargs``: ``compression``.

        Raises:
            ValueError: SimpleITK cannot write it (the message names the file and says why, on one line).
        """
        super().write(filename, verbose=verbose)
        image = self.create_backend_obj(
            self.data_obj,
            channel_dim=self.channel_dim,
            affine=self.affine,
            dtype=self.output_dtype,
            affine_lps_to_ras=self.affine_lps_to_ras,
        )
        try:
            with _locale_kept():
                sitk.WriteImage(
                    image, os.fspath(filename), useCompression=bool(kwargs.pop("compression", self.compression))
                )
        except RuntimeError as e:
            raise ValueError(f"{filename}: SimpleITK cannot write it: {error_line(e)}") from e

    @classmethod
    def create_backend_obj(
        cls,
        data_array: NdarrayOrTensor,
        channel_dim: int | None = 0,
        affine: NdarrayOrTensor | None = None,
        dtype: DtypeLike = np.float32,
        affine_lps_to_ras: bool | None = True,
        **kwargs,
    ) -> sitk.Image:
        """A ``sitk.Image`` of the channel-last ``data_array`` (``(x, y[, z])``, or ``(x, y[, z], C)`` when
        ``channel_dim`` is not ``None``), with the geometry of ``affine`` (identity when ``None``)."""
        if affine_lps_to_ras is None:
            space = data_array.meta.get(MetaKeys.SPACE, SpaceKeys.RAS) if isinstance(data_array, MetaTensor) else None
            affine_lps_to_ras = space != SpaceKeys.LPS
        array = convert_data_type(data_array, np.ndarray)[0]
        if dtype is not None:
            array = array.astype(get_equivalent_dtype(dtype, np.ndarray), copy=False)
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)  # SimpleITK has no boolean pixel type
        elif array.dtype == np.float16:
            array = array.astype(np.float32)  # nor a half-float one
        vector = channel_dim is not None
        rank = array.ndim - int(vector)
        if rank not in (2, 3):
            raise ValueError(
                f"SimpleITKWriter writes 2D or 3D images, got a channel-last array of shape {array.shape}"
                f"{' with vector pixels' if vector else ''}."
            )
        # SimpleITK's arrays are in reversed index order: (z, y, x[, C])
        image = sitk.GetImageFromArray(
            np.ascontiguousarray(array.transpose([*range(rank)[::-1], *([rank] if vector else [])])), isVector=vector
        )
        if affine is None:
            affine = np.eye(rank + 1)
        affine = to_affine_nd(rank, convert_data_type(affine, np.ndarray, dtype=np.float64)[0])
        if affine_lps_to_ras:
            affine = orientation_ras_lps(affine)
        spacing = affine_to_spacing(affine, r=rank)
        image.SetSpacing(spacing.tolist())
        image.SetOrigin(affine[:rank, rank].tolist())
        image.SetDirection((affine[:rank, :rank] / spacing).ravel().tolist())
        return image


class SaveLikeInputd(MapTransform):
    """``SaveImaged`` that writes each item in its input's format family: the extension comes from
    ``output_ext_for(meta["filename_or_obj"])`` (``.mha`` for an ``.mha`` input, ``.nii.gz`` for a DICOM folder...).

    ``SaveImage`` fixes its extension (and so its writer) when built, so one is built per extension, on first use.

    Args:
        keys: keys of the channel-first MetaTensors to save (their ``filename_or_obj`` meta names the input).
        allow_missing_keys: skip keys that are not in the item.
        save_kwargs: ``SaveImage``'s arguments (``output_dir``, ``output_postfix``, ``output_dtype``, ``resample``,
            ``separate_folder``, ``print_log``, ...) except ``output_ext`` and ``output_format``, which this sets.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **save_kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        fixed = sorted({"output_ext", "output_format"} & set(save_kwargs))
        if fixed:
            raise ValueError(f"SaveLikeInputd picks the extension per item from its input; do not pass {fixed}.")
        self.save_kwargs = save_kwargs
        self.savers: dict[str, SaveImage] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = img.meta if isinstance(img, MetaTensor) else d.get(f"{key}_meta_dict")
            if not meta or ImageMetaKey.FILENAME_OR_OBJ not in meta:
                raise ValueError(
                    f"SaveLikeInputd: {key!r} has no 'filename_or_obj' meta, so its input's format is unknown."
                )
            ext = output_ext_for(meta[ImageMetaKey.FILENAME_OR_OBJ])
            if ext not in self.savers:
                self.savers[ext] = AtomicSaveImage(output_ext=ext, **self.save_kwargs)  # never a half-written file
            self.savers[ext](img, meta_data=None if isinstance(img, MetaTensor) else meta)
        return d


def _register_writer() -> None:
    """Make ``SaveImage`` pick ``SimpleITKWriter`` first for MetaImage and NRRD (once, however often imported)."""
    # MONAI fills its writer table on the first lookup, and only if the table is still empty: look one up first, or
    # the entries added here would keep NIfTI and PNG from ever getting their writers
    resolve_writer("nii.gz", error_if_not_found=False)
    for ext in SIMPLEITK_WRITE_SUFFIXES:
        if SimpleITKWriter not in SUPPORTED_WRITERS.get(ext[1:], ()):
            register_writer(ext, SimpleITKWriter)


_register_writer()
