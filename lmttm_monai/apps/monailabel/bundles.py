"""Which of this project's bundles a MONAI Label server can serve, and how: read from the bundle folders alone.

Nothing here imports MONAI Label, so the helper command and the project's own tests can use it in the project's
environment; :mod:`lmttm_monai.apps.monailabel.tasks` turns the entries into MONAI Label tasks in the server's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmttm_monai.utils.bundles import bundles_dir
from lmttm_monai.utils.misc import comma_list

__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "ServedBundle",
    "default_bundles_dir",
    "find_bundles",
    "select_bundles",
]

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"

# the weights MONAI Label's bundle tasks load, in the order they look for them
WEIGHT_FILES = ("model.pt", "model.ts")


@dataclass(frozen=True)
class ServedBundle:
    """One bundle folder as the MONAI Label app sees it.

    ``kind`` is the MONAI Label task type (``segmentation`` or ``classification``), read from the bundle's first
    output in ``network_data_format``; ``weights`` is the file inference would load, or ``None`` when the bundle has
    none yet (it can still be trained from the datastore's labels, and is served for inference after a restart).
    """

    name: str
    path: Path
    kind: str
    weights: Path | None
    trainable: bool

    def describe(self) -> str:
        tasks = ["infer"] if self.weights else []
        tasks += ["train"] if self.trainable else []
        weights = f"weights {self.weights.name}" if self.weights else "no weights (models/model.pt missing)"
        return f"{self.name}: {self.kind}, {weights}, tasks: {', '.join(tasks) or 'none'}"


def default_bundles_dir() -> Path:
    """The bundles installed with the package (:func:`lmttm_monai.utils.bundles_dir`)."""
    return bundles_dir()


def _kind(metadata: dict, path: Path) -> str:
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    if not outputs:
        raise ValueError(f"{path}: configs/metadata.json has no network_data_format outputs")
    first = next(iter(outputs.values()))
    if first.get("format") == "classes" or first.get("type") == "probabilities":
        return CLASSIFICATION
    if first.get("format") == "segmentation":
        return SEGMENTATION
    raise ValueError(
        f"{path}: output format {first.get('format')!r} / type {first.get('type')!r} is neither a segmentation "
        "nor class probabilities; MONAI Label serves only those here"
    )


def read_bundle(path: str | os.PathLike) -> ServedBundle:
    """The :class:`ServedBundle` of one bundle folder; ``ValueError`` when it is not a servable bundle."""
    path = Path(path).resolve()
    configs = path / "configs"
    meta_file = configs / "metadata.json"
    if not meta_file.is_file():
        raise ValueError(f"{path}: no configs/metadata.json, not a bundle")
    if not any((configs / name).is_file() for name in ("inference.json", "inference.yaml")):
        raise ValueError(f"{path}: no configs/inference.json")
    with open(meta_file) as f:
        metadata = json.load(f)
    kind = _kind(metadata, path)
    weights = next((path / "models" / w for w in WEIGHT_FILES if (path / "models" / w).is_file()), None)
    # MONAI Label's train task fine-tunes segmentation bundles on the datastore's labels; a classification label is
    # not an image, so there is nothing in the datastore to train lmttm on
    trainable = kind == SEGMENTATION and any((configs / n).is_file() for n in ("train.json", "train.yaml"))
    return ServedBundle(name=path.name, path=path, kind=kind, weights=weights, trainable=trainable)


def find_bundles(bundles_dir: str | os.PathLike) -> dict[str, Path]:
    """``{name: folder}`` of every folder in ``bundles_dir`` holding ``configs/metadata.json``, sorted by name."""
    root = Path(bundles_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"bundles folder {root} does not exist (set it with --conf bundles_dir PATH)")
    return {p.name: p for p in sorted(root.iterdir()) if (p / "configs" / "metadata.json").is_file()}


def select_bundles(bundles_dir: str | os.PathLike, models: str | None = "all") -> list[ServedBundle]:
    """The bundles that ``--conf models`` names (``all``, or names separated by commas), in that order.

    Raises ``ValueError`` for a name that is not a bundle in ``bundles_dir`` (with the names that are), so that a
    typo stops the server at start-up instead of serving fewer models than asked.
    """
    available = find_bundles(bundles_dir)
    if not available:
        raise ValueError(f"no bundle (folder with configs/metadata.json) in {bundles_dir}")
    wanted = (models or "all").strip()
    if wanted.lower() == "all":
        names = list(available)
    else:
        names = comma_list(wanted)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(
                f"--conf models names {', '.join(unknown)}, not a bundle in {bundles_dir}; "
                f"choose from: all, {', '.join(available)}"
            )
    return [read_bundle(available[n]) for n in dict.fromkeys(names)]
