"""MONAI Label tasks for this project's bundles: what MONAI Label's bundle tasks do, plus what these bundles need.

Imports MONAI Label, so it runs in the server's environment only (``.ci/label-install.sh``, docs/monailabel.md).

What the stock ``BundleInferTask`` / ``BundleTrainTask`` (monailabel 0.8.5) lack for these bundles, and is added:

- the bundles write their results with ``lmttm_monai.data.SaveLikeInputd``, which MONAI Label does not know to drop
  (it drops ``SaveImaged`` only): left in, every request would also write a file into the bundle's ``eval/``;
- salstm's network input is 2D slices (metadata ``spatial_shape`` of two items) but it segments 3D volumes: the
  dimension that 3D Slicer is told is the one the bundle's input check (``ValidateSegmentationd``) demands;
- lmttm is a classifier: no restore step after it (it would treat class scores as an image), its file reading
  turned on (the config reads files only when ``input_dir`` is set) and the resampling to its input size said in
  the answer;
- the train configs refuse to replace ``models/model.pt`` unless ``overwrite`` is true, and fine-tuning from the
  datastore replaces it by design (the old weights are its starting point): the train task sets ``overwrite``;
- an image that the bundle cannot use, an unknown image id or a label that does not fit its image is the client's
  mistake: an HTTP 4xx that says which, not MONAI Label's bare "500 Internal Server Error".
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk
from fastapi import HTTPException
from monai.transforms import Resized, SaveImaged
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

from lmttm_monai.apps.monailabel.bundles import CLASSIFICATION, ServedBundle
from lmttm_monai.data import SaveLikeInputd, ValidateSegmentationd
from lmttm_monai.utils.errors import one_line

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_NAME_KEY",
    "BadInputError",
    "CheckedLocalDatastore",
    "ClassificationBundleInferTask",
    "SegmentationBundleInferTask",
    "SegmentationBundleTrainTask",
    "infer_task",
]

# every writer a bundle's postprocessing may hold: MONAI Label returns the result itself
_WRITERS = [SaveImaged, SaveLikeInputd]


class BadInputError(ValueError):
    """The request's image cannot go through the bundle's pre-processing (unreadable, wrong dimension, ...)."""


# the request key under which the app names the image for messages (an upload's path is a temporary file)
IMAGE_NAME_KEY = "lmttm_image_name"
_MESSAGE_LIMIT = 500


def _read_error(model: str, data: dict[str, Any], error: BaseException) -> BadInputError:
    name = data.get(IMAGE_NAME_KEY) or os.path.basename(str(data.get("image_path", "the image")))
    reason = one_line(error)
    reason = reason if len(reason) <= _MESSAGE_LIMIT else reason[: _MESSAGE_LIMIT - 3] + "..."
    return BadInputError(f"{model} cannot use {name}: {reason}")


class _CheckedInputMixin:
    """Pre-processing failures (reading, the bundle's input checks) raised as :class:`BadInputError`."""

    bundle_name: str

    def run_pre_transforms(self, data: dict[str, Any], transforms):
        try:
            return super().run_pre_transforms(data, transforms)  # type: ignore[misc]
        except Exception as error:
            raise _read_error(self.bundle_name, data, error) from error


def _instances(config, key: str) -> list:
    content = config.get_parsed_content(key, instantiate=True) if config.get(key) else []
    return list(getattr(content, "transforms", content))


class SegmentationBundleInferTask(_CheckedInputMixin, BundleInferTask):
    """A segmentation bundle's inference: a label map on the image's own grid (shape and affine)."""

    def __init__(self, bundle: ServedBundle, conf: dict[str, str]) -> None:
        self.bundle_name = bundle.name
        # load_strict: weights that do not fit the network are an error at the first request, not a silently
        # half-initialised model (MONAI Label's default loads non-strict)
        super().__init__(str(bundle.path), conf, type=InferType.SEGMENTATION, post_filter=_WRITERS, load_strict=True)
        if not self.is_valid():
            raise RuntimeError(f"{bundle.path}: MONAI Label could not read this bundle (see the warning above)")
        checks = [t for t in _instances(self.bundle_config, "preprocessing") if isinstance(t, ValidateSegmentationd)]
        if checks:
            self.dimension = checks[0].spatial_dims

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        if self.dimension == 2:
            return self._write_2d(data, extension)
        # class indices: uint8 unless the client asked for another type (MONAI Label would write float32)
        return super().writer(data, extension, dtype if dtype is not None or data.get("result_dtype") else np.uint8)

    def _write_2d(self, data: dict[str, Any], extension=None):
        """A 2D label map in the image's own format and size. MONAI Label's writer would save MONAI's (x, y) array
        with its channel as a (1, x, y) volume, which readers take for a transposed one-row picture."""
        pred = np.asarray(data[self.output_label_key]).squeeze()
        if pred.ndim != 2:
            raise RuntimeError(f"{self.bundle_name}: expected a 2D label map, got shape {list(pred.shape)}")
        image_path = data.get("image_path")
        ext = extension or data.get("result_extension") or (_extension(image_path) if image_path else ".png")
        with tempfile.NamedTemporaryFile(suffix=ext, delete=False) as f:  # the endpoint deletes it once sent
            output = f.name
        # MONAI's 2D readers index (x, y); an image file's array is (row = y, column = x)
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(pred.T).astype(np.uint8)), output)
        return output, dict(data.get(self.output_json_key, {}))


class ClassificationBundleInferTask(_CheckedInputMixin, BundleInferTask):
    """A classification bundle's inference on a volume of any size: class names and probabilities.

    The bundle's own file pre-processing reads the volume and resizes it to the network's input size (lmttm:
    ``Resized`` to ``image_size``^3); the answer carries the volume's shape before that and whether it was
    resampled, so a client knows that the scores are of a resampled image.
    """

    # the inference config reads files (LoadImaged, EnsureChannelFirstd, Resized) only when input_dir is set, and
    # reads MedMNIST arrays otherwise; every MONAI Label request is a file
    FILE_INPUT_OVERRIDES: ClassVar[dict[str, str]] = {"input_dir": "monailabel-request"}
    SHAPE_KEY = "input_spatial_shape"

    def __init__(self, bundle: ServedBundle, conf: dict[str, str]) -> None:
        self.bundle_name = bundle.name
        super().__init__(
            str(bundle.path),
            conf,
            type=InferType.CLASSIFICATION,
            add_post_restore=False,  # a restore step would resize the class scores like an image
            post_filter=_WRITERS,
            load_strict=True,
        )
        if not self.is_valid():
            raise RuntimeError(f"{bundle.path}: MONAI Label could not read this bundle (see the warning above)")
        resizers = [t for t in _instances(self.bundle_config, "preprocessing") if isinstance(t, Resized)]
        if not resizers:
            raise RuntimeError(
                f"{bundle.path}: its preprocessing has no Resized step, so it accepts only volumes of its input "
                "size; the MONAI Label app serves classification bundles that resample any volume"
            )
        self.input_size = [int(s) for s in resizers[0].resizer.spatial_size]
        self.resize_mode = str(resizers[0].resizer.mode)

    def _load_bundle_config(self, path, config):
        parser = super()._load_bundle_config(path, config)
        parser.config.update(self.FILE_INPUT_OVERRIDES)
        return parser

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        transforms = list(super().pre_transforms(data))
        first_resize = next(i for i, t in enumerate(transforms) if isinstance(t, Resized))
        transforms.insert(first_resize, _RecordSpatialShape(self.input_key, self.SHAPE_KEY))
        return transforms

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        label, result = super().writer(data, extension, dtype)
        shape = list(data.get(self.SHAPE_KEY, []))
        resampled = shape != self.input_size
        result["input_spatial_shape"] = shape
        result["model_input_size"] = self.input_size
        result["resampled"] = resampled
        shape_text, size_text = "x".join(map(str, shape)), "x".join(map(str, self.input_size))
        result["preprocessing"] = (
            f"resampled from {shape_text} to the model's input size {size_text} (Resized, mode {self.resize_mode})"
            if resampled
            else f"already the model's input size {size_text}, not resampled"
        )
        return label, result


class _RecordSpatialShape:
    """Keeps the channel-first image's spatial shape under ``target`` (before the bundle resizes it)."""

    def __init__(self, key: str, target: str) -> None:
        self.key, self.target = key, target

    def __call__(self, data):
        d = dict(data)
        d[self.target] = [int(s) for s in d[self.key].shape[1:]]
        return d


def infer_task(bundle: ServedBundle, conf: dict[str, str]) -> BundleInferTask:
    """The MONAI Label infer task of a bundle with weights."""
    if bundle.kind == CLASSIFICATION:
        return ClassificationBundleInferTask(bundle, conf)
    return SegmentationBundleInferTask(bundle, conf)


class SegmentationBundleTrainTask(BundleTrainTask):
    """Fine-tuning a segmentation bundle on the datastore's labels (MONAI Label's ``BundleTrainTask``), which writes
    the bundle's ``models/model.pt`` (the best validation Dice) that its infer task loads at the next request.

    Besides MONAI Label's own options (``max_epochs``, ``val_split``, ``pretrained``, ``device`` ...) a request may
    set the bundle's ``epoch_length`` (iterations per epoch; 0: the whole datastore), ``num_workers`` and
    ``learning_rate``.
    """

    # the train configs' top-level keys a request may set, with their types; 0 or empty keeps the bundle's value
    RUN_OPTIONS: ClassVar[dict[str, type]] = {"epoch_length": int, "num_workers": int, "learning_rate": float}

    def __init__(self, bundle: ServedBundle, conf: dict[str, str]) -> None:
        self.bundle_name = bundle.name
        self._request: dict[str, Any] = {}
        super().__init__(str(bundle.path), conf, load_strict=True)
        if not self.is_valid():
            raise RuntimeError(f"{bundle.path}: MONAI Label could not read this bundle's train config")

    def config(self) -> dict[str, Any]:
        options = super().config()
        options.update({key: 0 for key in self.RUN_OPTIONS})
        return options

    def __call__(self, request, datastore):
        labelled = [d for d in datastore.datalist() if d and d.get("label")]
        if len(labelled) < 2:
            raise ValueError(
                f"{self.bundle_name}: training needs at least 2 labelled images (one for validation, which picks "
                f"the weights written to models/model.pt); the datastore has {len(labelled)}"
            )
        request = dict(request)
        # MONAI Label's partition can leave validation empty on a small datastore, and then no model.pt is written
        val_split = float(request.get("val_split", 0.2))
        if 0 < val_split and round(len(labelled) * val_split) < 1:
            request["val_split"] = 1.0 / len(labelled)
        self._request = request
        return super().__call__(request, datastore)

    def _update_overrides(self, overrides):
        # fine-tuning from the datastore replaces the bundle's weights by design (they are its starting point,
        # loaded by the CheckpointLoader MONAI Label adds); the configs refuse that unless overwrite is true.
        # resume false: a checkpoint.pt left by an earlier run is not continued, this is a new run
        overrides["overwrite"] = True
        overrides["resume"] = False
        for key, cast in self.RUN_OPTIONS.items():
            value = self._request.get(key)
            if value not in (None, "", 0, "0"):
                overrides[key] = cast(value)
        # MONAI Label sets the trainer's max_epochs, not the bundle's epochs: what reads epochs (the length of a
        # cosine learning-rate schedule) must follow it, and so must validation, which alone writes models/model.pt
        # (mam_unetr validates every 4 epochs; a 2-epoch fine-tune would otherwise never write new weights)
        max_epochs = int(overrides.get(self.const.key_train_trainer_max_epochs()) or 0)
        if max_epochs > 0:
            overrides["epochs"] = max_epochs
            val_interval = self.bundle_config.get("val_interval")
            if isinstance(val_interval, int) and val_interval > max_epochs:
                overrides["val_interval"] = max_epochs
        logger.info(f"{self.bundle_name}: bundle overrides {sorted(overrides)}")
        return overrides


def _extension(path: str) -> str:
    name = os.path.basename(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1] or ".png"


def _image_size(path: str) -> tuple[int, ...]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    size = tuple(int(s) for s in reader.GetSize())
    # a 2D picture may be stored as a one-slice volume
    return size[:2] if len(size) == 3 and size[2] == 1 else size


class CheckedLocalDatastore(LocalDatastore):
    """MONAI Label's folder datastore that refuses, with HTTP 4xx, a label for an unknown image and a label that
    cannot be a segmentation of its image (unreadable, another grid size, values that are not class indices).

    Without these checks such a file is stored, and the next training fails on it in the background.
    """

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image_uri = self.get_image_uri(image_id)
        if not image_uri:
            raise HTTPException(status_code=404, detail=f"no image {image_id!r} in the datastore")
        try:
            label = sitk.ReadImage(label_filename)
        except RuntimeError as error:
            raise HTTPException(
                status_code=422, detail=f"the label for {image_id!r} is not an image file: {one_line(error)}"
            ) from error
        label_size, image_size = _image_size(label_filename), _image_size(image_uri)
        if label_size != image_size:
            raise HTTPException(
                status_code=422,
                detail=f"the label for {image_id!r} has size {list(label_size)}, its image {list(image_size)}",
            )
        values = sitk.GetArrayViewFromImage(label)
        if label.GetNumberOfComponentsPerPixel() != 1 or not np.all(np.isfinite(values)):
            raise HTTPException(status_code=422, detail=f"the label for {image_id!r} is not a one-channel label map")
        if np.any(values < 0) or np.any(values != np.round(values)):
            raise HTTPException(
                status_code=422, detail=f"the label for {image_id!r} holds values that are not class indices 0, 1, ..."
            )
        return super().save_label(image_id, label_filename, label_tag, label_info)
