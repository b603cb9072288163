"""MONAI's image savers, writing each file atomically: a killed run never leaves a segmentation cut short.

:class:`AtomicSaveImage` names the file as :class:`monai.transforms.SaveImage` does, has its writer write it with
its final name into a hidden temporary folder next to it, and renames it into place only once it is complete. The
two-file formats (MetaImage ``.mhd`` + ``.raw``, NRRD ``.nhdr`` + data) move their data file first and the header
last, so a header, the file a reader opens, always has its data. A killed run leaves only the hidden folder.
"""

from __future__ import annotations

import os
import shutil
from os import PathLike

import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage, SaveImaged
from monai.utils import MetaKeys

__all__ = ["AtomicSaveImage", "AtomicSaveImaged"]


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
