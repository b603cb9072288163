"""Segmentation data: Decathlon-style data lists split into train/val/test, and a check of image/label pairs.

Both segmentation bundles (``mam_swinunetr``, ``salstm``) read the Medical Segmentation Decathlon layout
(``dataset.json`` with a ``training`` list of ``{"image", "label"}`` paths). The Decathlon's own test images
have no labels, so validation and test sets are held-out parts of the labelled list: a seeded shuffle
(MONAI ``partition_dataset``) that is the same on every machine, so every run and every bundle that uses
the same ``ratios`` and ``seed`` sees the same split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, load_decathlon_datalist, partition_dataset
from monai.transforms import MapTransform

from lmttm_monai.data.volumes import affine_problem, check_max_voxels, size_problem, voxel_problem

__all__ = ["SPLITS", "decathlon_datalist", "ValidateSegmentationd", "source_name"]

SPLITS = ("train", "val", "test", "all")


def decathlon_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "train",
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_cases: int | None = None,
    list_key: str = "training",
) -> list[dict]:
    """The ``split`` part of the labelled list in ``dataset_dir/dataset.json``, with absolute paths.

    Args:
        dataset_dir: Decathlon task folder holding ``dataset.json`` (for example ``Task04_Hippocampus``).
        split: ``"train"``, ``"val"``, ``"test"`` (the three parts given by ``ratios``) or ``"all"``.
        ratios: relative sizes of train, val and test.
        seed: seed of the shuffle before partitioning; keep it fixed to keep the split.
        max_cases: keep only the first ``max_cases`` items of the part (small runs and CI); ``None`` keeps all.
        list_key: the list in ``dataset.json`` to read.

    Raises:
        FileNotFoundError: ``dataset.json``, or an image or label it lists, does not exist.
        ValueError: the list is missing or empty, an item lacks ``image``/``label``, or the arguments are invalid.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers (train, val, test), got {ratios}.")
    if max_cases is not None and max_cases < 1:
        raise ValueError(f"max_cases must be a positive number of cases or None, got {max_cases}.")
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    json_path = os.path.join(dataset_dir, "dataset.json")
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"{json_path}: no dataset.json (expected the Medical Segmentation Decathlon layout).")
    try:
        with open(json_path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: not valid JSON ({e}).") from e
    entries = raw.get(list_key) if isinstance(raw, dict) else None
    if not entries:
        raise ValueError(f"{json_path}: the {list_key!r} list is missing or empty.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise ValueError(f"{json_path}: item {i} of {list_key!r} needs both 'image' and 'label', got {entry!r}.")
    items = load_decathlon_datalist(json_path, is_segmentation=True, data_list_key=list_key, base_dir=dataset_dir)
    for item in items:
        for key in ("image", "label"):
            if not os.path.isfile(item[key]):
                raise FileNotFoundError(f"{json_path}: {key} {item[key]} does not exist.")
    if split != "all":
        parts = partition_dataset(items, ratios=list(ratios), shuffle=True, seed=seed)
        items = parts[("train", "val", "test").index(split)]
        if not items:
            raise ValueError(f"{json_path}: the {split!r} part of {len(entries)} cases at ratios {ratios} is empty.")
    return items[:max_cases] if max_cases is not None else items


def source_name(data: Mapping, key: Hashable) -> str:
    """The file a loaded image came from (its ``filename_or_obj`` meta), for error messages."""
    value = data.get(key)
    meta = getattr(value, "meta", None) or data.get(f"{key}_meta_dict") or {}
    name = meta.get("filename_or_obj", "<unknown file>")
    return str(name[0] if isinstance(name, (list, tuple)) else name)


class ValidateSegmentationd(MapTransform):
    """Check a loaded, channel-first image/label pair before any resampling, with errors that name the file.

    Use it right after ``LoadImaged`` + ``EnsureChannelFirstd``. It raises ``ValueError`` when

    - the image does not have ``spatial_dims`` spatial dimensions (for example a 2D image given to a 3D bundle),
    - the image has no voxels, or more than ``max_voxels`` (inference configs set it to bound memory),
    - the image's voxels are not real numbers, or some are NaN or infinite (normalisation would spread them
      to every voxel),
    - the image's affine is not finite or is singular (reorienting and saving invert it),
    - the label's spatial shape differs from the image's,
    - the label holds values other than the integers ``0 .. num_classes - 1``.

    Args:
        keys: ``(image_key, label_key)``; the label key may be absent from a data item (inference).
        num_classes: number of classes including background.
        spatial_dims: 2 or 3.
        allow_missing_keys: as in MONAI: skip keys that are not in the item.
        max_voxels: most spatial voxels an image may have; ``None`` for no limit.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        spatial_dims: int = 3,
        allow_missing_keys: bool = True,
        max_voxels: int | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must be (image_key, label_key), got {self.keys}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one class), got {num_classes}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.max_voxels = check_max_voxels(max_voxels)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image_key, label_key = self.keys
        image = d[image_key]
        image_file = source_name(d, image_key)
        if image.ndim != self.spatial_dims + 1:
            raise ValueError(
                f"{image_file}: expected a {self.spatial_dims}D image (channel-first shape with {self.spatial_dims} "
                f"spatial dimensions), got shape {tuple(image.shape)}."
            )
        affine = image.affine if isinstance(image, MetaTensor) else None
        problem = (
            size_problem(image.shape[1:], self.max_voxels)
            or voxel_problem(image)
            or (affine_problem(affine, self.spatial_dims) if affine is not None else None)
        )
        if problem:
            raise ValueError(f"{image_file}: {problem}.")
        if label_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"{image_file}: the data item has no {label_key!r}.")
        label = d[label_key]
        label_file = source_name(d, label_key)
        if tuple(label.shape[1:]) != tuple(image.shape[1:]) or label.shape[0] != 1:
            raise ValueError(
                f"{label_file}: label shape {tuple(label.shape)} does not match image {image_file} shape "
                f"{tuple(image.shape)} (expected one channel and the same spatial shape)."
            )
        values = torch.unique(torch.as_tensor(label)).cpu().numpy()
        bad = [v for v in values if v != np.round(v) or not 0 <= v < self.num_classes]
        if bad:
            raise ValueError(
                f"{label_file}: label values {[float(v) for v in bad[:5]]} are outside the declared classes "
                f"0..{self.num_classes - 1}."
            )
        return d
