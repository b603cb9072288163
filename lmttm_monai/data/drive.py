"""DRIVE (Digital Retinal Images for Vessel Extraction) data lists: image, vessel label and field-of-view mask.

Layout (as distributed): ``training/images/NN_training.tif``, ``training/1st_manual/NN_manual1.gif``,
``training/mask/NN_training_mask.gif`` for cases 21-40, and the same under ``test/`` with ``_test`` for cases
01-20 (first observer's labels as the reference). The DRIVE test set comes with labels, so it is the test
split; validation is held out of the 20 training cases (the last ``val_cases`` by case number).
"""

from __future__ import annotations

import glob
import os

__all__ = ["DRIVE_SPLITS", "drive_datalist"]

DRIVE_SPLITS = ("train", "val", "test")


def drive_datalist(
    dataset_dir: str | os.PathLike, split: str = "train", val_cases: int = 4, max_cases: int | None = None
) -> list[dict[str, str]]:
    """``[{"image", "label", "mask"}, ...]`` absolute paths for one DRIVE split, sorted by case number.

    Args:
        dataset_dir: the DRIVE folder holding ``training/`` and ``test/``.
        split: ``"train"`` (training cases but the last ``val_cases``), ``"val"`` (those) or ``"test"``.
        val_cases: how many training cases to hold out for validation.
        max_cases: keep only the first ``max_cases`` items (small runs and CI); ``None`` keeps all.

    Raises:
        FileNotFoundError: the folder has no images for the split, or an image lacks its label or mask
            (the message names the missing file).
        ValueError: invalid arguments.
    """
    if split not in DRIVE_SPLITS:
        raise ValueError(f"split must be one of {DRIVE_SPLITS}, got {split!r}.")
    if max_cases is not None and max_cases < 1:
        raise ValueError(f"max_cases must be a positive number of cases or None, got {max_cases}.")
    root = os.path.abspath(os.fspath(dataset_dir))
    part, suffix = ("test", "test") if split == "test" else ("training", "training")
    images = sorted(glob.glob(os.path.join(root, part, "images", f"*_{suffix}.tif")))
    if not images:
        raise FileNotFoundError(f"{os.path.join(root, part, 'images')}: no DRIVE images (*_{suffix}.tif).")
    if split != "test":
        if not 0 < val_cases < len(images):
            raise ValueError(f"val_cases must be between 1 and {len(images) - 1}, got {val_cases}.")
        images = images[-val_cases:] if split == "val" else images[:-val_cases]
    items = []
    for image in images:
        case = os.path.basename(image).split("_")[0]
        item = {
            "image": image,
            "label": os.path.join(root, part, "1st_manual", f"{case}_manual1.gif"),
            "mask": os.path.join(root, part, "mask", f"{case}_{suffix}_mask.gif"),
        }
        for key in ("label", "mask"):
            if not os.path.isfile(item[key]):
                raise FileNotFoundError(f"{item[key]}: the {key} of {image} does not exist.")
        items.append(item)
    return items[:max_cases] if max_cases is not None else items
