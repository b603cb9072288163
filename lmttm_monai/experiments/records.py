"""What a comparison is and how its runs are read: the arms behind each model card, and the parsers of a finished
run's files (metrics.csv, the training log, MONAI's per-case CSVs). Shared by :mod:`.results` (tables) and
:mod:`.figures` (pictures), so neither imports the other's internals."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmttm_monai.utils.errors import UserError
from lmttm_monai.utils.misc import comma_list

__all__ = [
    "Arm", "COMPARISONS", "Comparison", "ResultsError", "comparison_named", "dataset_of", "read_curve",
    "read_metrics", "read_per_case", "read_per_label", "read_raw_csv", "read_resumes", "read_train_loss",
    "select_arms", "test_labels",
]  # fmt: skip


@dataclass(frozen=True)
class Arm:
    label: str
    overlays: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


@dataclass(frozen=True)
class Comparison:
    bundle: str
    arms: tuple[Arm, ...]
    metrics: tuple[str, ...]  # from the evaluation's metrics.csv; the first is the headline
    curve: str  # the validation metric logged each epoch
    per_case: str | None = None  # the evaluation's per-case CSV, for paired per-case differences
    data_folder: str = ""  # under MONAI_DATA_DIRECTORY, as the bundle's default dataset_dir
    paper: dict[str, str] = field(default_factory=dict)


COMPARISONS = {
    "lmttm": Comparison(
        "lmttm",
        (Arm("LMTTM"), Arm("TTM", ("ttm.json",)), Arm("TTM scenic", ("ttm_scenic.json",)),
         Arm("3D ResNet-18", ("resnet18.json",)), Arm("LMTTM paper", ("lmttm_paper.json",)),
         Arm("3D DenseNet-121 (64³)", ("densenet121.json",))),  # fmt: skip
        ("test_acc", "test_auc"),
        "val_auc",
        data_folder="medmnist",
    ),
    "mam_swinunetr": Comparison(
        "mam_swinunetr",
        (Arm("MAM-SwinUNETR (ISTS)"), Arm("SwinUNETR", ("swinunetr.json",)), Arm("MAM-SwinUNETR (STS)", ("sts.json",))),
        ("test_mean_dice", "test_hd95"),
        "val_mean_dice",
        per_case="test_mean_dice_raw.csv",
        data_folder="Task04_Hippocampus",
    ),
    "mam_unetr": Comparison(
        "mam_unetr",
        (Arm("MAM-UNETR"), Arm("UNETR", ("unetr.json",))),
        ("test_mean_dice", "test_hd95"),
        "val_mean_dice",
        per_case="test_mean_dice_raw.csv",
        data_folder="DRIVE",
    ),
    "salstm": Comparison(
        "salstm",
        (Arm("SALSTM"), Arm("LSTMSA", ("lstmsa.json",)), Arm("U-Net", ("unet.json",)),
         Arm("U-Net, 3 slices", ("unet_context.json",))),  # fmt: skip
        ("test_mean_dice", "test_hd95"),
        "val_mean_dice",
        per_case="test_mean_dice_raw.csv",
        data_folder="Task04_Hippocampus",
    ),
}


class ResultsError(UserError):
    """A results command that cannot run as asked; the message says why."""


def read_metrics(path: Path) -> dict[str, float]:
    """MONAI ``MetricsSaver``'s ``metrics.csv``: one ``name,value`` (or tab-separated) per line."""
    metrics = {}
    for line in path.read_text().splitlines():
        name, _, value = line.replace("\t", ",").partition(",")
        if value:
            metrics[name] = float(value)
    return metrics


def read_curve(log: str, metric: str) -> list[float]:
    """The validation metric of each epoch, from the training log's ``Epoch[k] Metrics -- name: value`` lines."""
    pattern = re.compile(rf"Epoch\[(\d+)\] Metrics -- .*?\b{re.escape(metric)}: ([-0-9.eE+nan]+)")
    by_epoch = {int(m.group(1)): float(m.group(2)) for m in pattern.finditer(log)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_resumes(log: str) -> list[int]:
    """The epochs after which a killed run was continued, from the training log's ``resume:`` lines (the log is
    appended to on each resume; a run killed after its last epoch resumes with nothing left to train): empty for a
    run trained in one piece."""
    pattern = r"resume: (?:continuing after epoch (\d+) of|training had already finished \(epoch (\d+) of)"
    found = re.findall(pattern, log)
    return [int(after or finished) for after, finished in found]


def read_train_loss(log: str) -> list[float]:
    """The mean training loss of each epoch, from the training log's ``Epoch: e/E, Iter: i/N -- train_loss: v`` lines.

    A run killed and resumed appends to the same log and repeats the epoch it was killed in from its first
    iteration: an iteration seen again in an epoch starts that epoch afresh, so each epoch averages one pass.
    """
    pattern = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+ -- train_loss: ([-0-9.eE+naif]+)")
    by_epoch: dict[int, dict[int, float]] = {}
    for m in pattern.finditer(log):
        epoch, iteration = int(m.group(1)), int(m.group(2))
        losses = by_epoch.setdefault(epoch, {})
        if iteration in losses:
            losses.clear()
        losses[iteration] = float(m.group(3))
    return [float(np.mean(list(by_epoch[e].values()))) for e in sorted(by_epoch)]


def read_raw_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a MONAI ``*_raw.csv`` (``filename<TAB>class0<TAB>...<TAB>mean``, one row per case)."""
    text = path.read_text()
    header, *rows = csv.reader(text.splitlines(), delimiter="\t" if "\t" in text.splitlines()[0] else ",")
    return header, [row for row in rows if row]


def read_per_case(path: Path) -> dict[str, float]:
    """Per-case mean of a MONAI ``*_raw.csv``."""
    header, rows = read_raw_csv(path)
    column = header.index("mean") if "mean" in header else len(header) - 1
    return {row[0]: float(row[column]) for row in rows}


def read_per_label(test_dir: Path, metrics: tuple[str, ...]) -> dict[str, list[float]]:
    """Per label, the mean over the test cases of each metric's MONAI ``<metric>_raw.csv`` (columns ``class0``,
    ``class1``, ...; cases where a label's metric is NaN, as HD95 is for a label not predicted, are left out)."""
    per_label = {}
    for metric in metrics:
        path = test_dir / f"{metric}_raw.csv"
        if not path.is_file():
            continue
        header, rows = read_raw_csv(path)
        columns = [i for i, name in enumerate(header) if name.startswith("class")]
        values = np.array([[float(row[i]) for i in columns] for row in rows], dtype=float)
        per_label[metric] = [round(float(v), 6) for v in np.nanmean(np.where(np.isinf(values), np.nan, values), 0)]
    return per_label


def select_arms(comparison: Comparison, arms) -> Comparison:
    wanted = comma_list(arms)
    if not wanted:
        return comparison
    chosen = tuple(a for a in comparison.arms if a.label in wanted or a.slug in wanted)
    unknown = [w for w in wanted if all(w not in (a.label, a.slug) for a in comparison.arms)]
    if unknown or not chosen:
        names = ", ".join(a.slug for a in comparison.arms)
        raise ResultsError(f"unknown arm(s) {', '.join(unknown) or arms!r} of {comparison.bundle}; choose from {names}")
    return Comparison(comparison.bundle, chosen, comparison.metrics, comparison.curve, comparison.per_case,
                      comparison.data_folder, comparison.paper)  # fmt: skip


def dataset_of(overrides: dict) -> tuple[str, int]:
    """The MedMNIST dataset and size of an lmttm comparison: its overrides, else the bundle's defaults."""
    return overrides.get("dataset_name", "adrenalmnist3d"), int(overrides.get("image_size", 28))


def test_labels(overrides: dict) -> tuple[str, int, np.ndarray]:
    """Name, size and true labels (dataset order) of the test split an lmttm comparison was evaluated on."""
    from lmttm_monai.data import default_dataset_dir, load_medmnist3d

    name, size = dataset_of(overrides)
    _, labels = load_medmnist3d(name, "test", size, overrides.get("dataset_dir", default_dataset_dir("medmnist")),
                                download=False)  # fmt: skip
    return name, size, labels


def comparison_named(name: str) -> Comparison:
    if name not in COMPARISONS:
        raise ResultsError(f"unknown comparison {name!r}; choose one of {', '.join(COMPARISONS)}")
    return COMPARISONS[name]


