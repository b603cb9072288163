"""Pictures of a results folder of ``python -m lmttm_monai.experiments.results``: ``run ... --figures DIR`` or ``table OUT``.

Each picture is drawn from the finished runs of the folder (those with a ``run.json``) and written as one PNG:

- :func:`curves`: the validation metric and the training loss per epoch of every arm, mean over the seeds with
  a min-max band, the last fifth of the epochs shaded (convergence is stated as "flat over the last fifth").
- :func:`roc_and_confusion` (classification, the ``lmttm`` bundle): ROC curves per arm and seed, and one
  confusion matrix per arm summed over the seeds, titled with the test split's majority-class rate.
- :func:`segmentation_overlays` (the segmentation bundles): the best, median and worst test case by Dice, image
  slice with the label's and the prediction's contours.
- :func:`memory_weights` (LMTTM and TTM): where one test volume's reads and writes went, step by step.

matplotlib is an optional dependency (``pip install "lmttm-monai[figures]"``), imported only here and only when a
picture is drawn; figures are drawn with the Agg canvas on :class:`matplotlib.figure.Figure` objects, without
pyplot, so nothing depends on (or changes) a global backend.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmttm_monai.utils.errors import UserError
from lmttm_monai.utils.outputs import atomic_path

__all__ = [
    "FiguresError",
    "MissingMatplotlibError",
    "curves",
    "figure_prefix",
    "memory_weights",
    "roc_and_confusion",
    "segmentation_overlays",
    "write_figures",
]

INSTALL = 'pip install "lmttm-monai[figures]"'
DPI = 110
# one colour per arm, by its place in the comparison, so an arm has the same colour in every picture
ARM_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
LABEL_COLOUR, PREDICTION_COLOUR = "#00e000", "#ff2bd6"  # both stand out on a grey image and from each other
BOTH_COLOUR = "#ffe14d"  # where label and prediction agree (one-class overlays)


class FiguresError(UserError):
    """A picture that cannot be drawn as asked; the message says why."""


class MissingMatplotlibError(FiguresError, ImportError):
    """matplotlib, which the pictures need, is not installed."""


def _figure(width: float, height: float) -> Any:
    """A new :class:`matplotlib.figure.Figure` on an Agg canvas, with constrained layout (no overlapping labels)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        # from None: the one-line CLI error names the innermost cause, and this message is the one that helps
        raise MissingMatplotlibError(f"the figures need matplotlib, which is not installed: {INSTALL}") from None
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | os.PathLike) -> str:
    # atomic: a docs/figures picture is either the old one or the new one, never half written
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)  # the temporary name ends in .tmp, so the format is given
    return str(path)


def _arm_colour(comparison: Any, arm: Any) -> str:
    return ARM_COLOURS[list(comparison.arms).index(arm) % len(ARM_COLOURS)]


def _finished_runs(out_dir: Path, comparison: Any) -> dict[str, list[tuple[Path, dict]]]:
    """Per arm label, ``(run folder, run.json)`` of each finished run, in seed order."""
    runs = {}
    for arm in comparison.arms:
        found = [(p.parent, json.loads(p.read_text())) for p in (out_dir / arm.slug).glob("seed*/run.json")]
        runs[arm.label] = sorted(found, key=lambda item: item[1].get("seed", 0))
    return runs


def _train_loss(run_dir: Path, record: Mapping) -> list[float]:
    """The per-epoch mean training loss of a run: its run.json's, or parsed from train.log for older run.json files."""
    from lmttm_monai.experiments.records import read_train_loss

    if record.get("train_loss"):
        return list(record["train_loss"])
    log = run_dir / "train.log"
    return read_train_loss(log.read_text(errors="replace")) if log.is_file() else []


def _band(series: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs (from 1) and the mean, min and max over the series at each epoch; a series shorter than the longest
    (a run with fewer epochs) counts only where it has values."""
    length = max((len(s) for s in series), default=0)
    columns = [[s[e] for s in series if e < len(s) and math.isfinite(s[e])] for e in range(length)]
    keep = [e for e, c in enumerate(columns) if c]
    mean = np.array([np.mean(columns[e]) for e in keep])
    low = np.array([np.min(columns[e]) for e in keep])
    high = np.array([np.max(columns[e]) for e in keep])
    return np.array(keep) + 1, mean, low, high


def _validation_interval(curve: Sequence[float], train_loss: Sequence[float]) -> int:
    """Epochs between two validations of a run: one loss per epoch and one curve value per validation, so their
    ratio (mam_unetr validates every 4 epochs; its 50 values belong to epochs 4, 8, ..., 200)."""
    if not curve or len(train_loss) < len(curve):
        return 1
    return max(1, round(len(train_loss) / len(curve)))


def curves(out_dir: str | os.PathLike, comparison: Any, path: str | os.PathLike) -> str:
    """Validation metric (left) and training loss (right) per epoch of every arm; returns ``path``.

    Each arm is one colour: its line is the mean over the finished seeds, the band around it their minimum and
    maximum. The validation metric is run.json's ``curve`` (the bundle's key metric after each epoch); the training
    loss is the mean of each epoch's iteration losses (run.json's ``train_loss``, or train.log for older runs).
    The last fifth of the epochs is shaded: the docs call a run converged when its curve is flat there.

    Args:
        out_dir: the results folder (``results run --out``).
        comparison: the :class:`lmttm_monai.experiments.records.Comparison` (its arms and validation metric).
        path: the PNG to write.
    """
    out_dir = Path(out_dir)
    runs = _finished_runs(out_dir, comparison)
    figure = _figure(11.5, 4.3)
    axes = figure.subplots(1, 2)
    longest, seeds, intervals = 0, set(), set()
    for arm in comparison.arms:
        colour, finished = _arm_colour(comparison, arm), runs[arm.label]
        if not finished:
            continue
        seeds.update(r.get("seed") for _, r in finished)
        series = ([r.get("curve", []) for _, r in finished], [_train_loss(d, r) for d, r in finished])
        interval = _validation_interval(series[0][0], series[1][0])
        intervals.add(interval)
        for ax, values, step in zip(axes, series, (interval, 1)):
            epochs, mean, low, high = _band(values)
            if not len(epochs):
                continue
            epochs = epochs * step  # the validation curve's values belong to every interval-th epoch
            longest = max(longest, int(epochs[-1]))
            marker = "o" if len(epochs) <= 20 else None  # a few epochs: show the points, not only a segment
            ax.plot(epochs, mean, color=colour, marker=marker, markersize=3.5, label=f"{arm.label} ({len(finished)})")
            if len(finished) > 1:
                ax.fill_between(epochs, low, high, color=colour, alpha=0.18, linewidth=0)
    fifth = longest // 5
    for ax, ylabel in zip(axes, (f"validation {comparison.curve}", "training loss (mean per epoch)")):
        if fifth:
            ax.axvspan(longest - fifth + 0.5, longest + 0.5, color="0.88", zorder=0, label=f"last fifth ({fifth} ep.)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlim(0.5, max(longest, 1) + 0.5)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8, title="arm (seeds)", title_fontsize=8)
        else:
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
    every = f"every {intervals.pop()} epochs" if len(intervals) == 1 and 1 not in intervals else "each epoch"
    axes[0].set_title(f"validation {comparison.curve} after {every}")
    axes[1].set_title("training loss")
    note = "" if fifth else " (under 5 epochs: no last fifth to mark)"
    figure.suptitle(f"{comparison.bundle}: mean over seeds {sorted(seeds)}, band min-max{note}", fontsize=11)
    return _save(figure, path)


def _roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates and the area under them, for binary ``labels`` (1 positive) and ``scores``."""
    if labels.min() == labels.max():  # one class only: no ROC curve exists
        return np.array([0.0, 1.0]), np.array([np.nan, np.nan]), float("nan")
    try:
        from sklearn.metrics import roc_auc_score, roc_curve
    except ImportError:
        roc_curve = None
    if roc_curve is not None:
        fpr, tpr, _ = roc_curve(labels, scores)
        return fpr, tpr, float(roc_auc_score(labels, scores))
    # numpy: one point per distinct score, from the highest down (ties move both rates at once)
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], labels[order].astype(float)
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tps = np.cumsum(hits)[last_of_tie]
    fps = last_of_tie + 1 - tps
    tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A ``test_predictions.csv``: dataset indices (from ``<name>_test_<index>``), class probabilities ``[N, K]``,
    predicted classes, and the class names of the ``prob_<class>`` columns."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], [row for row in rows[1:] if row]
    prob_columns = [i for i, name in enumerate(header) if name.startswith("prob_")]
    names = [header[i][len("prob_") :] for i in prob_columns]
    indices = np.array([int(re.search(r"(\d+)$", row[0]).group(1)) for row in body])
    probs = np.array([[float(row[i]) for i in prob_columns] for row in body])
    if "predicted_class" in header:
        predicted = np.array([int(float(row[header.index("predicted_class")])) for row in body])
    else:
        predicted = probs.argmax(1)
    return indices, probs, predicted, names


def roc_and_confusion(
    out_dir: str | os.PathLike,
    comparison: Any,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    roc_path: str | os.PathLike,
    confusion_path: str | os.PathLike,
) -> tuple[str, str]:
    """ROC curves and confusion matrices of the test predictions of every arm; returns the two paths.

    ROC (one panel per arm, one line per seed, the AUC in the legend): of the class-1 probability for two classes;
    for more, the macro one-vs-rest curve (the per-class curves' true positive rates averaged on one false
    positive grid) with the mean of the per-class AUCs, which is how MedMNIST's AUC averages. Confusion (one panel
    per arm): counts summed over the seeds, true class down, predicted class across, each cell also as a share
    of its true class; the title gives the majority-class rate, the accuracy of always predicting that class.

    Args:
        out_dir: the results folder.
        comparison: the :class:`lmttm_monai.experiments.records.Comparison`.
        labels: the test split's true classes in dataset order (the predictions' ``<name>_test_<index>``).
        class_names: the class names, in index order.
        roc_path, confusion_path: the PNGs to write.
    """
    labels = np.asarray(labels).reshape(-1).astype(int)
    runs = _finished_runs(Path(out_dir), comparison)
    arms = [arm for arm in comparison.arms if runs[arm.label]]
    if not arms:
        raise FiguresError(f"no finished run in {out_dir} to draw ROC curves from")
    k = len(class_names)
    grid = np.linspace(0.0, 1.0, 201)
    # at least as wide as the two-line titles for one arm; confusion panels grow with the classes (organmnist3d: 11)
    panel = max(3.9, 0.5 * k + 1.2)
    roc_figure = _figure(max(3.9 * len(arms) + 0.6, 5.0), 4.4)
    confusion_figure = _figure(max(panel * len(arms) + 0.6, 5.6), panel + 1.4)
    roc_axes = np.atleast_1d(roc_figure.subplots(1, len(arms), sharey=True, squeeze=False)[0])
    confusion_axes = np.atleast_1d(confusion_figure.subplots(1, len(arms), squeeze=False)[0])
    for ax, confusion_ax, arm in zip(roc_axes, confusion_axes, arms):
        colour = _arm_colour(comparison, arm)
        counts = np.zeros((k, k), dtype=int)
        seeds = []
        for shade, (run_dir, record) in enumerate(runs[arm.label]):
            csv_path = run_dir / "test" / "test_predictions.csv"
            if not csv_path.is_file():
                continue
            indices, probs, predicted, _ = _read_predictions(csv_path)
            truth = labels[indices]
            seeds.append(record.get("seed"))
            np.add.at(counts, (truth, predicted), 1)
            if k == 2:
                fpr, tpr, auc = _roc((truth == 1).astype(int), probs[:, 1])
                curve = (fpr, tpr)
            else:
                per_class = [_roc((truth == c).astype(int), probs[:, c]) for c in range(k)]
                present = [c for c in per_class if math.isfinite(c[2])]
                curve = (grid, np.mean([np.interp(grid, fpr, tpr) for fpr, tpr, _ in present], axis=0))
                auc = float(np.mean([c[2] for c in present])) if present else float("nan")
            # seeds of one arm: the arm's colour, each a little lighter, so an arm reads as one family of lines
            alpha = 1.0 - 0.55 * shade / max(1, len(runs[arm.label]) - 1)
            ax.plot(*curve, color=colour, alpha=alpha, linewidth=1.4, label=f"seed {record.get('seed')}: AUC {auc:.3f}")
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance: AUC 0.5")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate")
        ax.grid(alpha=0.3)
        ax.set_title(arm.label)
        ax.legend(fontsize=8, loc="lower right")
        _confusion_panel(confusion_ax, counts, class_names, f"{arm.label}, seeds {seeds}")
    roc_axes[0].set_ylabel("true positive rate")
    what = f"P({class_names[1]})" if k == 2 else f"macro one-vs-rest over {k} classes"
    roc_figure.suptitle(f"{comparison.bundle}: test ROC, one line per seed\n{what}", fontsize=11)
    totals = np.bincount(labels, minlength=k)
    majority = int(totals.argmax())
    confusion_figure.suptitle(
        f"{comparison.bundle}: test confusion, sum over seeds ({len(labels)} cases each)\nmajority-class rate "
        f"{totals[majority] / totals.sum():.4f} (always predicting '{class_names[majority]}')",
        fontsize=11,
    )
    return _save(roc_figure, roc_path), _save(confusion_figure, confusion_path)


def _confusion_panel(ax: Any, counts: np.ndarray, class_names: Sequence[str], title: str) -> None:
    k = len(class_names)
    rows = counts.sum(1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)  # coloured by row share: the counts of classes differ a lot
    for (i, j), count in np.ndenumerate(counts):
        text = f"{count}\n{shares[i, j]:.0%}" if k <= 5 else str(count)  # many classes: the colour gives the share
        ax.text(j, i, text, ha="center", va="center", fontsize=9 if k <= 5 else 7,
                color="white" if shares[i, j] > 0.6 else "black")  # fmt: skip
    tilt = k > 3 or max(map(len, class_names)) > 12  # long or many names would run into each other
    ax.set_xticks(range(k), class_names, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(counts) / max(1, counts.sum())
    ax.set_title(f"{title}\naccuracy {accuracy:.4f}", fontsize=10)


def _parse_value(value: Any) -> Any:
    """A ``--override`` value as ``python -m monai.bundle run`` gives it to the config (fire's parsing)."""
    from fire.parser import DefaultParseValue

    return DefaultParseValue(value) if isinstance(value, str) else value


def _bundle_parser(bundle: str, config_names: Sequence[str], overrides: Mapping, run_dir: Path) -> Any:
    """The bundle's config as the run's evaluation read it: its files, the run's overrides and checkpoint folder."""
    from monai.bundle import ConfigParser

    from lmttm_monai.utils.bundles import bundles_dir

    root = bundles_dir() / bundle
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / name) for name in config_names])
    parser["bundle_root"] = str(root)  # the configs look for bundles/<name> relative to the working folder
    for key, value in overrides.items():
        parser[key] = _parse_value(value)
    parser["ckpt_dir"] = str(run_dir / "models")
    return parser


def _trained_network(parser: Any, run_dir: Path, network: Any = None) -> Any:
    """The run's network (``network``, else the config's ``network_def``) with its ``models/model.pt`` weights, on
    the config's device, in eval mode (no dropout)."""
    from lmttm_monai.handlers.checkpoint_loader import load_weights, state_dict_mismatch

    device = parser.get_parsed_content("device")
    network = (parser.get_parsed_content("network_def") if network is None else network).to(device)
    path = run_dir / "models" / "model.pt"
    state = load_weights(path, map_location=device)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # a checkpoint saved as {"model": state_dict}
    problem = state_dict_mismatch(network, state)
    if problem:
        raise FiguresError(f"{path} does not fit the bundle's network as configured now: {problem}")
    network.load_state_dict(state)
    return network.eval()


def _run_record(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        raise FiguresError(f"{path} does not exist: the run has not finished")
    return json.loads(path.read_text())


def _case_name(path: str) -> str:
    name = os.path.basename(str(path))
    for ext in (".nii.gz", ".nii", ".png", ".tif", ".gif", ".jpg"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def segmentation_overlays(run_dir: str | os.PathLike, comparison: Any, path: str | os.PathLike) -> str:
    """The best, median and worst test case of one segmentation run by Dice; returns ``path``.

    The cases are ranked by run.json's ``per_case`` (the evaluation's per-case mean Dice over the foreground
    classes). Each panel is the image (a 3D volume's slice with the most label voxels, along the bundle's slice
    axis or the last one) with the label's contour and the prediction's contour in two colours, one line style
    per foreground class; with one foreground class (DRIVE's vessels, too thin for contours) every foreground
    pixel is coloured instead: label and prediction, label only, prediction only. The evaluations of mam_swinunetr and mam_unetr save their predictions, but in the
    original image space (after ``Invertd``) or as scaled PNGs, and salstm's saves none; so the three cases are
    inferred again here, in the evaluation's own preprocessed space, with the bundle's network (the run's
    ``models/model.pt``), inferer and, where the bundle masks its predictions (DRIVE's field of view), its mask.
    Only those three cases are loaded and inferred.

    Args:
        run_dir: one finished run (``OUT/<arm>/seed<k>``).
        comparison: the :class:`lmttm_monai.experiments.records.Comparison` it belongs to.
        path: the PNG to write.
    """
    import torch

    run_dir = Path(run_dir)
    record = _run_record(run_dir)
    per_case = {case: float(v) for case, v in record.get("per_case", {}).items() if math.isfinite(float(v))}
    if not per_case:
        raise FiguresError(f"{run_dir / 'run.json'} holds no per-case Dice to rank the test cases by")
    ranked = sorted(per_case, key=per_case.get)
    picks: dict[str, str] = {}  # case -> rank; fewer than three cases would name one case twice
    for rank, case in (("best", ranked[-1]), ("median", ranked[(len(ranked) - 1) // 2]), ("worst", ranked[0])):
        picks.setdefault(case, rank)
    parser = _bundle_parser(comparison.bundle, ("train.json", "evaluate.json", *record.get("overlays", ())),
                            record.get("overrides", {}), run_dir)  # fmt: skip
    items = {str(item["image"]): item for item in parser.get_parsed_content("validate#dataset#data")}
    missing = [case for case in picks if case not in items]
    if missing:
        raise FiguresError(f"test case {missing[0]} of {run_dir / 'run.json'} is not in the bundle's test split now")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    network = _trained_network(parser, run_dir)
    device = parser.get_parsed_content("device")
    slice_axis = int(parser["slice_axis"]) if "slice_axis" in parser else None
    panels = []
    num_classes = 2
    for case, rank in picks.items():
        data = preprocessing(dict(items[case]))
        image = torch.as_tensor(data["image"])
        with torch.no_grad():
            logits = torch.as_tensor(inferer(image.unsqueeze(0).to(device), network))
        num_classes = int(logits.shape[1])
        prediction = logits.argmax(1)[0].cpu().numpy()
        label = np.asarray(torch.as_tensor(data["label"]).cpu())[0].round().astype(int)
        if "mask" in data:  # the bundle scores only the field of view: its prediction is masked the same way
            prediction = prediction * (np.asarray(torch.as_tensor(data["mask"]).cpu())[0] > 0)
        shown, origin, label, prediction, where = _overlay_slice(np.asarray(image.cpu()), label, prediction, slice_axis)
        title = f"{rank}: {_case_name(case)}, Dice {per_case[case]:.3f}{where}"
        panels.append((title, shown, origin, label, prediction))
    # the figure's height follows the slices' shape, so wide slices leave no empty band above the legend
    aspect = max(p[1].shape[0] / p[1].shape[1] for p in panels)
    figure = _figure(4.2 * len(panels), 4.2 * aspect + 1.3)
    axes = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)[0])
    for ax, (title, shown, origin, label, prediction) in zip(axes, panels):
        if num_classes == 2:  # one foreground class: every pixel coloured by agreement (thin vessels lose contours)
            ax.imshow(_agreement_picture(shown, label, prediction), origin=origin, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=10)
            continue
        ax.imshow(shown, cmap="gray", origin=origin, interpolation="nearest")
        for c in range(1, num_classes):
            style = ("solid", "dashed", "dotted", "dashdot")[(c - 1) % 4]
            # the prediction first, the label (wider) over it: where they agree, both stay visible; thinner lines on
            # large images (DRIVE's 565 x 584), where thin structures (vessels) would vanish under wide ones
            thin = 0.5 if max(shown.shape[:2]) > 200 else 1.0
            for mask, colour, width in ((prediction, PREDICTION_COLOUR, 1.2 * thin), (label, LABEL_COLOUR, 2.0 * thin)):
                if (mask == c).any() and not (mask == c).all():
                    ax.contour((mask == c).T.astype(float), levels=[0.5], colors=[colour], linestyles=style,
                               linewidths=width)  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
    _overlay_legend(figure, num_classes)
    figure.suptitle(f"{comparison.bundle} {record.get('arm')} seed {record.get('seed')}: best, median and worst of "
                    f"{len(per_case)} test cases by Dice", fontsize=11)  # fmt: skip
    return _save(figure, path)


def _overlay_slice(
    image: np.ndarray, label: np.ndarray, prediction: np.ndarray, slice_axis: int | None
) -> tuple[np.ndarray, str, np.ndarray, np.ndarray, str]:
    """What one overlay panel shows: the image in display range (rows x columns, or x 3 for RGB), the ``imshow``
    origin, the label and prediction as ``[columns, rows]`` arrays (``contour`` of their transpose), and a title
    line naming the slice of a volume.

    A volume ``[C, D1, D2, D3]`` is cut along ``slice_axis`` (default the last) at the slice with the most label
    voxels (the most predicted ones when the label is empty); a 2D image ``[C, W, H]`` (MONAI's reading order) is
    shown whole.
    """
    where = ""
    if label.ndim == 3:
        axis = slice_axis if slice_axis is not None else 2
        area = (np.moveaxis(label, axis, 0) > 0).reshape(label.shape[axis], -1).sum(1)
        if not area.any():  # no label in the volume: the slice with the most predicted voxels
            area = (np.moveaxis(prediction, axis, 0) > 0).reshape(label.shape[axis], -1).sum(1)
        index = int(area.argmax()) if area.any() else label.shape[axis] // 2
        image, label, prediction = (np.take(a, index, axis=axis) for a in (image[0], label, prediction))
        where = f"\nslice {index} of {area.size} on axis {axis}"
        # voxel axes (i, j) of the slice: i across, j up
        shown, origin = image.T, "lower"
    else:
        # a 2D picture as MONAI reads it ([C, W, H]): transposed back to rows x columns, top row first
        shown = np.moveaxis(image, 0, -1).transpose(1, 0, 2) if image.shape[0] == 3 else image[0].T
        origin = "upper"
    low, high = np.percentile(shown, (0.5, 99.5))
    shown = np.clip((shown - low) / max(high - low, 1e-8), 0, 1)  # normalised intensities into display range
    return shown, origin, label, prediction, where


def _agreement_picture(shown: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The image in grey, dimmed, with each foreground pixel coloured by where it is foreground: in both the label
    and the prediction, in the label only (missed) or in the prediction only; rows x columns x RGB."""
    from matplotlib.colors import to_rgb

    grey = shown.mean(-1) if shown.ndim == 3 else shown
    picture = np.repeat(0.55 * grey[..., None], 3, axis=-1)
    truth, guess = label.T > 0, prediction.T > 0  # [columns, rows] -> rows x columns, as `shown`
    for where, colour in ((truth & guess, BOTH_COLOUR), (truth & ~guess, LABEL_COLOUR), (~truth & guess, PREDICTION_COLOUR)):
        picture[where] = to_rgb(colour)
    return picture


def _overlay_legend(figure: Any, num_classes: int) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if num_classes == 2:
        handles = [Patch(color=BOTH_COLOUR, label="label and prediction"),
                   Patch(color=LABEL_COLOUR, label="label only (missed)"),
                   Patch(color=PREDICTION_COLOUR, label="prediction only")]  # fmt: skip
        figure.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
        return
    handles = []
    for c in range(1, num_classes):
        style = ("solid", "dashed", "dotted", "dashdot")[(c - 1) % 4]
        suffix = f" (class {c})" if num_classes > 2 else ""
        handles += [Line2D([], [], color=LABEL_COLOUR, linestyle=style, linewidth=2.0, label=f"label{suffix}"),
                    Line2D([], [], color=PREDICTION_COLOUR, linestyle=style, linewidth=1.2,
                           label=f"prediction{suffix}")]  # fmt: skip
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)


def memory_weights(run_dir: str | os.PathLike, path: str | os.PathLike, index: int = 0) -> str | None:
    """Where an LMTTM or TTM run read and wrote, step by step, on test volume ``index``; returns ``path``, or
    ``None`` when the run's network has no ``forward_with_weights`` (a 3D ResNet-18).

    The trained network (bundle config with the run's overlays and overrides, ``models/model.pt``) classifies the
    test volume once through ``forward_with_weights``. Rows are the steps ``t`` (slabs of ``patch_size`` slices along
    the first axis). The first column is the slab itself (its mean over its slices); then, per read unit (LMTTM:
    the units ``j-1, j, j+1`` around the pointer; TTM: its one memory), the read weight on each of the slab's input
    tokens on the patch grid, summed over the ``r`` read tokens (one shared colour scale). On the right, per step:
    the share of each unit's read weight that went to the memory tokens rather than the input tokens, and the
    split of the write weight (mean over the written tokens) over the segments of the write sequence (LMTTM:
    ``unit j, unit j-1, unit j+1, inputs, outputs``; TTM: ``memory, inputs, outputs``).

    Args:
        run_dir: one finished run of the lmttm bundle (``OUT/<arm>/seed<k>``).
        path: the PNG to write.
        index: the test volume, in dataset order.
    """
    import torch

    run_dir = Path(run_dir)
    record = _run_record(run_dir)
    parser = _bundle_parser("lmttm", ("train.json", "evaluate.json", *record.get("overlays", ())),
                            record.get("overrides", {}), run_dir)  # fmt: skip
    network = parser.get_parsed_content("network_def")
    if not hasattr(network, "forward_with_weights"):  # checked before loading: a ResNet has no memory to show
        return None
    network = _trained_network(parser, run_dir, network)
    item = parser.get_parsed_content("validate#dataset#data")[index]
    data = parser.get_parsed_content("validate#preprocessing")(dict(item))
    volume = torch.as_tensor(data["image"]).as_subclass(torch.Tensor).unsqueeze(0).float()
    device = parser.get_parsed_content("device")
    with torch.no_grad():
        grid = network.tokenizer(volume.to(device)).shape[2:]  # [steps, rows, columns] of patches
        logits, reads, writes = network.forward_with_weights(volume.to(device))
    probs = logits.softmax(-1)[0].cpu().numpy()
    reads, writes = reads[0].cpu().numpy(), writes[0].cpu().numpy()  # [T, G, r, L_read], [T, S, L_write]
    steps, units = reads.shape[:2]
    inputs = network.input_tokens
    memory = reads.shape[-1] - inputs  # the read sequence is [memory (unit) tokens ; input tokens]
    outputs = network.memory.num_read_tokens  # as many output tokens as read tokens are written back
    linked = hasattr(network.memory, "unit_tokens")
    if linked:
        u = network.memory.unit_tokens
        segments = (("unit j", u), ("unit j-1", u), ("unit j+1", u), ("inputs", inputs), ("outputs", outputs))
        unit_names = ("unit j-1", "unit j", "unit j+1")
    else:
        segments = (("memory", writes.shape[-1] - inputs - outputs), ("inputs", inputs), ("outputs", outputs))
        unit_names = ("memory",)
    plane = tuple(int(g) for g in grid[1:]) if len(grid) == 3 else (1, int(grid[1]))
    input_mass = reads[..., memory:].sum(axis=2).reshape(steps, units, *plane)  # summed over the r read tokens
    memory_share = reads[..., :memory].sum(-1).mean(-1)  # [T, G]: each read token's weights sum to 1
    bounds = np.cumsum([0] + [length for _, length in segments])
    write_split = np.stack([writes[:, :, a:b].sum(-1).mean(-1) for a, b in itertools.pairwise(bounds)], -1)

    names = _class_names(run_dir, parser, len(probs))
    truth = int(np.asarray(item["label"]).reshape(-1)[0])
    case = str(getattr(item["image"], "meta", {}).get("filename_or_obj", f"test volume {index}"))

    # one colour per memory segment in both right-hand panels; units j-1, j, j+1 in the heat maps' column order
    colours = {"unit j-1": "#6baed6", "unit j": "#08519c", "unit j+1": "#bdd7e7", "memory": "#08519c",
               "inputs": "#fd8d3c", "outputs": "#74c476"}  # fmt: skip
    cell = 1.0 if steps <= 12 else 0.6
    figure = _figure(cell * (1 + units) + 7.8, cell * steps + 2.4)
    # rows: the steps, then one row for the colour bar and the legends, so none of them overlaps a panel
    spec = figure.add_gridspec(steps + 1, 3 + units, width_ratios=[cell] * (1 + units) + [3.3, 3.6],
                               height_ratios=[cell] * steps + [0.9])  # fmt: skip
    slab = np.asarray(volume[0, 0].cpu())
    depth = slab.shape[0] // steps
    low, high = float(input_mass.min()), float(input_mass.max())
    heat = None
    for t in range(steps):
        ax = figure.add_subplot(spec[t, 0])
        ax.imshow(slab[t * depth : (t + 1) * depth].mean(0), cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"t={t}", rotation=0, ha="right", va="center", fontsize=9)
        if t == 0:
            ax.set_title(f"slab\n(mean of {depth})" if cell >= 1 else "slab", fontsize=9 if cell >= 1 else 8)
        for g in range(units):
            ax = figure.add_subplot(spec[t, 1 + g])
            # the weights' own range, not 0..max: after little training they are near uniform, and 0..max hides it
            heat = ax.imshow(input_mass[t, g], cmap="magma", vmin=low, vmax=high, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if t == 0:
                # narrow cells (64^3: 21 steps) get the short name, so that neighbouring titles do not run together
                title = f"read with\n{unit_names[g]}" if cell >= 1 else unit_names[g].replace(" ", "\n")
                ax.set_title(title, fontsize=9 if cell >= 1 else 8)
    read_tokens, length = reads.shape[2], reads.shape[-1]
    holder = figure.add_subplot(spec[steps, : 1 + units])
    holder.set_axis_off()
    bar = figure.colorbar(heat, cax=holder.inset_axes([0, 0.7, 1, 0.3]), orientation="horizontal")
    bar.ax.tick_params(labelsize=7)
    bar.set_label(f"read weight per input token\n(sum over the {read_tokens} read tokens;\n"
                  f"uniform {read_tokens}/{length} = {read_tokens / length:.3f})", fontsize=8)  # fmt: skip
    positions = np.arange(steps)
    ax = figure.add_subplot(spec[:steps, -2])
    height = 0.8 / units
    for g in range(units):
        ax.barh(positions - 0.4 + height * (g + 0.5), memory_share[:, g], height=height,
                color=colours[unit_names[g]], edgecolor="0.3", linewidth=0.3, label=unit_names[g])  # fmt: skip
    ax.axvline(memory / length, color="0.3", linestyle=":", linewidth=1, label="uniform")
    # zoomed in when every share is small (64^3: 32 memory tokens of 473), else bars of a few pixels say nothing
    ax.set_xlim(0, min(1.0, max(0.1, 1.3 * max(float(memory_share.max()), memory / length))))
    ax.set_ylim(steps - 0.5, -0.5)  # step 0 at the top, level with the heat maps' first row
    ax.set_yticks(positions, [f"t={t}" for t in range(steps)], fontsize=8)
    ax.set_xlabel("share of read weight on memory\n(the rest: on the input tokens)", fontsize=9)
    ax.set_title(f"read: memory vs input\n({memory} memory + {inputs} input tokens)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    legend_ax = figure.add_subplot(spec[steps, -2])
    legend_ax.set_axis_off()
    legend_ax.legend(handles, labels, fontsize=7, loc="center", ncol=2, frameon=False)
    ax = figure.add_subplot(spec[:steps, -1])
    left = np.zeros(steps)
    for (name, tokens), share in zip(segments, write_split.T):
        ax.barh(positions, share, left=left, color=colours[name], height=0.8, edgecolor="0.3", linewidth=0.3,
                label=f"{name} ({tokens})")  # fmt: skip
        left += share
    ax.set_xlim(0, 1)
    ax.set_ylim(steps - 0.5, -0.5)
    ax.set_yticks(positions, [f"t={t}" for t in range(steps)], fontsize=8)
    ax.set_xlabel("share of write weight\n(mean over the written tokens)", fontsize=9)
    ax.set_title("write: split over the write sequence\n(segment and its tokens)", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    legend_ax = figure.add_subplot(spec[steps, -1])
    legend_ax.set_axis_off()
    legend_ax.legend(handles, labels, fontsize=7, loc="center", ncol=3, frameon=False)
    predicted = int(probs.argmax())
    figure.suptitle(
        f"{record.get('arm')} seed {record.get('seed')}: reads and writes on {case} (test volume {index}),\n"
        f"true '{names[truth]}', predicted '{names[predicted]}' (p={probs[predicted]:.2f})",
        fontsize=11,
    )
    return _save(figure, path)


def _class_names(run_dir: Path, parser: Any, count: int) -> list[str]:
    """Class names from the run's predictions' ``prob_<class>`` columns, else the dataset's, else numbers."""
    predictions = run_dir / "test" / "test_predictions.csv"
    if predictions.is_file():
        names = _read_predictions(predictions)[3]
        if len(names) == count:
            return names
    try:
        return list(parser.get_parsed_content("dataset_info")["label_names"])
    except Exception:  # medmnist's INFO not installed: numbered classes still make a readable title
        return [str(c) for c in range(count)]


def figure_prefix(name: str, overrides: Mapping[str, Any]) -> str:
    """File name prefix of a comparison's pictures: the comparison, then its dataset (and size).

    Every prefix names its dataset so pictures of several datasets can share one folder: the lmttm bundle its
    MedMNIST dataset and size (``lmttm_adrenalmnist3d_28``); a segmentation comparison its dataset folder, the
    overridden ``dataset_dir`` or else the bundle's default, lower case without an MSD ``TaskNN_`` part
    (``salstm_hippocampus``, ``mam_unetr_drive``), and the image size when it is overridden.
    """
    from lmttm_monai.experiments.records import COMPARISONS, dataset_of

    parts = [name]
    if COMPARISONS[name].bundle == "lmttm":
        parts += [str(p) for p in dataset_of(overrides)]
    else:
        given = str(overrides.get("dataset_dir", "")).strip()
        folder = os.path.basename(os.path.normpath(given)) if given else COMPARISONS[name].data_folder
        parts.append(re.sub(r"^task\d+_", "", folder.lower()))
        if "image_size" in overrides:
            parts.append(str(overrides["image_size"]))
    return "_".join([name] + [re.sub(r"[^A-Za-z0-9.-]+", "-", p).strip("-") for p in parts[1:]])


def write_figures(
    out: str | os.PathLike, figures: str | os.PathLike | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw every picture of the results folder ``out`` into ``figures`` (default ``out/figures``).

    Returns ``(pictures, notes)``: ``(caption, path)`` of each PNG written, and one line for each picture that
    could not be drawn (no finished run, a checkpoint that no longer fits the network), so that the table is still
    written. Raises :class:`MissingMatplotlibError` when matplotlib is not installed.
    """
    from lmttm_monai.utils.errors import one_line
    from lmttm_monai.experiments.records import comparison_named, select_arms, test_labels

    out_dir = Path(out).expanduser()
    info = json.loads((out_dir / "comparison.json").read_text())
    comparison = select_arms(comparison_named(info["name"]), info.get("arms", ()))
    folder = Path(figures).expanduser() if figures else out_dir / "figures"
    _figure(1, 1)  # matplotlib missing: say so before anything else
    runs = _finished_runs(out_dir, comparison)
    if not any(runs.values()):
        return [], [f"No figures: no run of {info['name']} in {out_dir} has finished yet (none has a run.json)."]
    prefix = figure_prefix(info["name"], info.get("overrides", {}))
    pictures: list[tuple[str, str]] = []
    notes: list[str] = []

    def draw(captions: str | tuple[str, ...], make: Any, *args: Any) -> None:
        captions = (captions,) if isinstance(captions, str) else captions
        try:
            made = make(*args)
        except MissingMatplotlibError:
            raise
        except Exception as e:  # the other pictures and the table are still worth having
            notes.append(f"{' and '.join(captions)}: not drawn ({one_line(e)}).")
            return
        for caption, p in zip(captions, made if isinstance(made, tuple) else (made,)):
            if p:  # None: nothing to draw for this run (memory_weights of a network without a memory)
                pictures.append((caption, p))

    draw(f"Validation {comparison.curve} and training loss per epoch", curves, out_dir, comparison,
         folder / f"{prefix}_curves.png")  # fmt: skip
    first_runs = [(arm, runs[arm.label][0][0]) for arm in comparison.arms if runs[arm.label]]
    if comparison.bundle == "lmttm":

        def classification() -> tuple[str, str]:
            # the true labels from the dataset file (the predictions hold none), the class names from the predictions
            labels = test_labels(info.get("overrides", {}))[2]
            class_names = _read_predictions(first_runs[0][1] / "test" / "test_predictions.csv")[3]
            return roc_and_confusion(out_dir, comparison, labels, class_names, folder / f"{prefix}_roc.png",
                                     folder / f"{prefix}_confusion.png")  # fmt: skip

        draw(("Test ROC curves per arm and seed", "Test confusion matrices per arm, summed over seeds"), classification)
        for arm, run_dir in first_runs:
            draw(f"{arm.label} {run_dir.name}: memory reads and writes on test volume 0", memory_weights, run_dir,
                 folder / f"{prefix}_{arm.slug}_memory.png")  # fmt: skip
    else:
        for arm, run_dir in first_runs:
            draw(f"{arm.label} {run_dir.name}: best, median and worst test case", segmentation_overlays, run_dir,
                 comparison, folder / f"{prefix}_{arm.slug}_overlays.png")  # fmt: skip
    return pictures, notes
