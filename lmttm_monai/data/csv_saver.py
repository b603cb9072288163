"""Class-probability CSVs that a person (or pandas) can read: a header row, columns named by the classes, and the
predicted class as an integer."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from monai.data import CSVSaver

from lmttm_monai.utils.outputs import atomic_path

__all__ = ["ClassProbabilitySaver"]


class ClassProbabilitySaver(CSVSaver):
    """MONAI's :class:`~monai.data.CSVSaver` (give it to ``ClassificationSaver(saver=...)``) with a header.

    Each row is ``filename, probability of class 0, ..., probability of class C-1[, predicted class]``; the header
    names the columns ``filename``, ``prob_<class name>`` and ``predicted_class``, and the predicted class (the
    argmax of the probabilities, saved when ``with_prediction``) is an integer, not ``0.0``. The saved data of one
    item must be its ``C`` class probabilities.

    Args:
        output_dir: folder of the file.
        filename: the CSV's name.
        class_names: the classes in index order (for the header), e.g. ``dataset_info['label_names']``.
        with_prediction: add the ``predicted_class`` column.
        overwrite: replace an existing file (MONAI's default); otherwise rows are added to it, under its header.

    The file is written atomically when the run ends (:func:`lmttm_monai.utils.outputs.atomic_path`): a killed run leaves
    the earlier file as it was (MONAI's saver deletes it when it is created) and never a CSV cut short.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        filename: str,
        class_names: Sequence[str],
        with_prediction: bool = True,
        overwrite: bool = True,
    ) -> None:
        if not class_names:
            raise ValueError("class_names must name at least one class.")
        # MONAI removes the old file here when overwrite; this saver replaces it only once the new one is complete
        super().__init__(output_dir=output_dir, filename=filename, overwrite=False, flush=False, delimiter=",")
        self._replace = overwrite
        self.class_names = [str(name) for name in class_names]
        self.with_prediction = with_prediction

    def header(self) -> list[str]:
        columns = ["filename", *(f"prob_{name}" for name in self.class_names)]
        return columns + (["predicted_class"] if self.with_prediction else [])

    def finalize(self) -> None:
        """Write the cached rows (and the header, into a new file), then clear the cache."""
        rows = []
        for name, values in self._cache_dict.items():
            probabilities = values.flatten()
            if len(probabilities) != len(self.class_names):
                raise ValueError(
                    f"{self._filepath}: {name} has {len(probabilities)} values but {len(self.class_names)} "
                    "classes are named; the saver takes the class probabilities of each item."
                )
            row = [name, *(repr(float(p)) for p in probabilities)]
            rows.append(row + ([int(probabilities.argmax())] if self.with_prediction else []))
        keep = not self._replace and self._filepath.exists() and self._filepath.stat().st_size > 0
        earlier = self._filepath.read_text() if keep else ""
        with atomic_path(self._filepath) as tmp, open(tmp, "w", newline="") as f:
            f.write(earlier)
            writer = csv.writer(f)
            if not keep:
                writer.writerow(self.header())
            writer.writerows(rows)
        self._replace = False  # a later finalize of the same saver adds to what this one wrote
        self.reset_cache()
