"""MONAI's image savers, writing each file atomically: a killed run never leaves a segmentation cut short.

:class:`AtomicSaveImage` names the file as :class:`monai.transforms.SaveImage` does, has its writer write it with
its final name into a hidden temporary folder next to it, and renames it into place only once it is complete. The
two-file formats (MetaImage ``.mhd`` + ``.raw``, NRRD ``.nhdr`` + data) move their data file first and the header
last, so a header, the file a reader opens, always has its data. A killed run leaves only the hidden folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from os import PathLike

import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage, SaveImaged
from monai.utils import MetaKeys

__all__ = ["AtomicSaveImage", "AtomicSaveImaged", "SEGMENTATION_EXTS", "output_ext_for", "unwritten"]

logger = logging.getLogger(__name__)


class AtomicSaveImage(SaveImage):
    """:class:`monai.transforms.SaveImage` (same arguments) that writes atomically (module docstring)."""

    def __call__(self, img: torch.Tensor, meta_data: dict | None = None, filename: str | PathLike | None = None):
        meta = img.meta if isinstance(img, MetaTensor) else meta_data
        if filename is not None:
            final = f"{filename}{self.output_ext}"
        else:
            final = self.folder_layout.filename(**self.fname_formatter(meta, self))
        folder, name = os.path.split(os.fspath(final))
        folder = folder or "."
        stem = name[: -len(self.output_ext)] if self.output_ext and name.endswith(self.output_ext) else name
        staging = os.path.join(folder, f".{stem}.{os.getpid()}.tmp")
        os.makedirs(staging, exist_ok=True)
        try:
            out = super().__call__(img, meta_data, filename=os.path.join(staging, stem))
            written = sorted(os.listdir(staging), key=lambda f: f == name)  # the named file (header) last
            for file in written:
                os.replace(os.path.join(staging, file), os.path.join(folder, file))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if self.savepath_in_metadict and meta is not None:
            meta[MetaKeys.SAVED_TO] = final  # where the file is, not where it was written first
        return out


class AtomicSaveImaged(SaveImaged):
    """:class:`monai.transforms.SaveImaged` (same arguments) whose files are written atomically."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # SaveImaged builds its SaveImage from a dozen arguments; the atomic one adds behaviour, not state
        self.saver.__class__ = AtomicSaveImage


SEGMENTATION_EXTS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")  # longest first: ".nii.gz" before ".nii"


def output_ext_for(path: PathLike | Sequence[PathLike]) -> str:
    """The file extension a segmentation of the input ``path`` should be written with.

    NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd``) and NRRD (``.nrrd``, ``.nhdr``) inputs keep their
    own extension (lower case), so the segmentation opens next to its image in the same tools. Everything else gets
    ``.nii.gz``:

    - a DICOM series folder, because SimpleITK writes DICOM only as plain images (one file per slice), not as the
      DICOM Segmentation objects that viewers expect for a label map; NIfTI keeps its geometry just as well;
    - ``.npy`` (and any other file), because NumPy stores no spacing, origin or direction; a NIfTI with MONAI's
      affine is the closest thing to "the input's space".

    ``path`` may be a sequence (the ``filename_or_obj`` of a multi-file item): its first entry decides.
    """
    if isinstance(path, Sequence) and not isinstance(path, str):
        path = path[0]
    name = os.fspath(path).lower()
    for ext in SEGMENTATION_EXTS:
        if name.endswith(ext):
            return ext
    return ".nii.gz"


def unwritten(
    datalist: Sequence[dict],
    output_dir: str | PathLike,
    output_postfix: str = "seg",
    output_ext: str | None = None,
    resume: bool | str = False,
) -> list[dict]:
    """The items of ``datalist`` whose output is not in ``output_dir`` yet; every item unless ``resume``.

    With ``resume`` a rerun of an interrupted inference completes what is missing: the output name of each item is
    the one the bundle's saver gives it (MONAI's naming with ``output_postfix``, ``separate_folder=False``, and
    ``output_ext``, or :func:`~lmttm_monai.data.output_ext_for` of the input when ``None``), and items whose file
    exists are left out. The files are whole, since every one was written atomically.
    """
    from lmttm_monai.utils.outputs import as_bool

    if not as_bool(resume, "resume"):
        return list(datalist)
    remaining = []
    for item in datalist:
        source = item["image"]
        saver = SaveImage(output_dir=output_dir, output_postfix=output_postfix, separate_folder=False, print_log=False,
                          output_ext=output_ext or output_ext_for(source))  # fmt: skip
        if not os.path.isfile(saver.folder_layout.filename(**saver.fname_formatter({"filename_or_obj": source}, saver))):
            remaining.append(item)
    logger.info(
        "resume: %d of %d inputs already have their output in %s; inferring the other %d",
        len(datalist) - len(remaining), len(datalist), output_dir, len(remaining),
    )  # fmt: skip
    return remaining
